"""Training loops: behavior cloning (``bc``), with exact resume and DistributedDataParallel."""
