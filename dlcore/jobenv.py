"""What `dlcore.launch` and the processes it starts agree on: the environment variables
that describe a job, and the exit code of a process whose peer failed. No JAX here: the
launcher imports this in milliseconds, so it handles signals from its first moment."""
ENV_COORDINATOR = "DLCORE_COORDINATOR"
ENV_NUM_PROCESSES = "DLCORE_NUM_PROCESSES"
ENV_PROCESS_ID = "DLCORE_PROCESS_ID"
EXIT_PEER = 6  # a peer process failed, or never came
