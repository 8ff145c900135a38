//! A `pipe` binary with one extra stage kind: how a research group adds its own kind without
//! forking the engine. The engine's process-level tests (SIGKILL, concurrent runs) use it.
//!
//!     cargo run --example custom_stage -- plan tests/pipelines/toy_chain.yaml

mod toy;

fn main() -> std::process::ExitCode {
    let mut registry = pipe::stages::Registry::builtin();
    registry.register(toy::Toy);
    pipe::cli::main(registry)
}
