//! The `pipe` binary: the command line over the library, with the real stage kinds.

fn main() -> std::process::ExitCode {
    pipe::cli::main(pipe::stages::Registry::builtin())
}
