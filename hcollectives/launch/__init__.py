"""Task launch: the fork server (zygote), the stdlib-only stub mrjob runs as a
task's interpreter, and the task trace behind the breakdown. Standard library only
at import: the stub runs at every task start."""
