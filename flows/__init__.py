"""jaco's backup pipeline as Prefect flows (backup, drill, prune, watchdog) and their tasks.

Importing it caps glibc's malloc arenas of the process (flows.memory): a flow process is
threaded, and each thread's arena would keep what it freed.
"""

from flows.memory import cap_malloc_arenas

cap_malloc_arenas()
