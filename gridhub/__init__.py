"""gridhub core: settings, database, registry, users and the gridhub command."""
