#!/bin/sh
# Patroni's post_bootstrap on the first primary: the hub's role (password from GRIDHUB_DB_PASSWORD, passed to psql
# as a variable, never on a command line) and its database with TimescaleDB. $1 is Patroni's connection string.
set -eu
psql "$1" -v ON_ERROR_STOP=1 -v pw="$GRIDHUB_DB_PASSWORD" <<'SQL'
CREATE ROLE gridhub LOGIN PASSWORD :'pw';
CREATE DATABASE gridhub OWNER gridhub;
\c gridhub
CREATE EXTENSION IF NOT EXISTS timescaledb;
SQL
