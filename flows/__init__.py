"""jaco's backup pipeline as Prefect flows (backup, drill, prune, watchdog) and their tasks.

Importing it caps glibc's malloc arenas of the process (jaco.memory): a flow process is
threaded, and each thread's arena would keep what it freed.
"""

from jaco.public import cap_malloc_arenas

cap_malloc_arenas()
