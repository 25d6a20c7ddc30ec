//! Probe behaviour against real servers on 127.0.0.1 (scripts/peers-probe.sh starts them)
//! and local responders. Loopback is denied by default, so every test builds a policy that
//! allows 127.0.0.1 (or one port of it) explicitly.

mod amqp;
mod aws;
mod cassandra;
mod catalog;
mod clickhouse;
mod deadline;
mod ftp;
mod http;
mod http_responder;
mod jdbc;
mod kafka;
mod kit;
mod ldap;
mod logsink;
mod mongodb;
mod mqtt;
mod mysql;
mod nats;
mod postgres;
mod pulsar;
mod redis;
mod smtp;
mod snowflake;
mod sqlserver;
mod ssrf;
