"""`orch dev`: a server and N agents as local processes, for trying orch out."""
