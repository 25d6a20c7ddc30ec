//! Probe behaviour against real servers on 127.0.0.1 (scripts/peers-probe.sh starts them)
//! and local responders. Loopback is denied by default, so every test builds a policy that
//! allows 127.0.0.1 (or one port of it) explicitly.

mod amqp;
mod aws;
mod azure;
mod cassandra;
mod catalog;
mod clickhouse;
mod deadline;
mod duckdb;
mod ftp;
mod gcp;
mod http;
mod http_responder;
mod jdbc;
mod kafka;
mod kinesis;
mod kit;
mod ldap;
mod logsink;
mod mongodb;
mod mqtt;
mod mysql;
mod nats;
mod oracle;
mod postgres;
mod pulsar;
mod redis;
mod salesforce;
mod smtp;
mod snmp;
mod snowflake;
mod sqlserver;
mod ssh;
mod ssrf;
mod stomp;
mod vendors;
