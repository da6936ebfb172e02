"""Build hosts: hosts.toml, an SSH connection and one command on a host, and what runs there (fleet, status, sync)."""
