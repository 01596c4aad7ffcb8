//! End-to-end tests of the whole sidecar against the emulators, on 127.0.0.1 ports.
//! One test binary (ripgrep / svix style); each module is one area.
mod bitrix;
mod browser;
mod cli;
mod edges;
mod emulate;
mod results;
mod security;
mod serve;
mod support;
mod sync;
mod ui;
mod writeback;
mod writeback_b24;
