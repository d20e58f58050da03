"""jaco's backup pipeline as Prefect flows (backup, drill, prune, watchdog) and their tasks.

Importing it sets glibc's malloc for the process (jaco.memory): at most two arenas, since a
flow process is threaded and each thread's arena would keep what it freed; and freed memory
kept for the next 1 MiB messages of the backup it takes, rather than mapped again for each.
"""

from jaco.public import cap_malloc_arenas, keep_freed_memory

cap_malloc_arenas()
keep_freed_memory()
