"""The `peft-skip` command line and the whole runs its sub-commands do."""
