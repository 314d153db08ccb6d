"""Sub-commands whose arguments and handlers live outside cli.py (which stays the list of commands); each
module imports its heavy dependencies inside the handler, so ``pipelines --help`` stays fast."""
