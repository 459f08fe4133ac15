"""Machine tasks: the task networks, the frozen-task wrapper that gives the codec its task loss, their training and evaluation."""
