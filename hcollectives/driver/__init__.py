"""The iteration driver: the loop (coordinator, speculation, checkpoints, progress),
its command-line options, and the launcher that runs one iteration's job with mrjob."""
