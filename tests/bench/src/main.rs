//! `optikon-bench`: see the library; `scripts/bench` builds and runs it.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    optikon_bench::main(optikon_bench::Args::parse())
}
