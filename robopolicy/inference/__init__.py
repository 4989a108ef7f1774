"""Running a policy in time: action queues, RTI warm starts, temporal ensembling."""
