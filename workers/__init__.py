"""The worker role: takes runs from the queues and executes their scripts as subprocesses."""
