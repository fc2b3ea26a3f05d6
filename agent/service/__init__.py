"""The plant service around the runtime: the daemon's lifecycle and signals (`daemon`),
systemd notify and watchdog (`systemd`), logs, credentials, the state-dir lock, the status
file, the reload rules, and the process limits (`memory`, `descriptors`)."""
