//! `tensim`: compare tensor-network models from their weights. One module per command: each
//! takes its arguments, calls the library and prints the library's result types.

mod args;
mod bench;
mod breakdown;
mod compare;
mod demo;
mod init_arch;
mod inspect;
mod matrix;
mod pack;
mod phases;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tensim",
    version,
    about = "Are these two networks computing the same thing? \
Exact, symmetry-invariant similarity of bilinear (tensor-network) models from their weights."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare two models.
    ///
    /// Models of different hidden widths or depths are comparable under `tensor` as long as their
    /// input and output sizes agree (a model with fewer bilinear layers is lifted by identity
    /// nodes at its output). `matrix` needs identical architectures; `behavioral` and `cka`
    /// evaluate both models on --data or on --samples Gaussian inputs.
    ///
    /// A model file is a safetensors file (as `safetensors.torch.save_file(model.state_dict(),
    /// path)` writes) or a PyTorch checkpoint (`torch.save(model.state_dict(), path)`: .pt, .pth,
    /// .bin, .ckpt; --key names the state dict inside a larger saved dict) with an architecture
    /// description, embedded (`tensim pack`) or given with --arch: the README's "Model files"
    /// section describes it, and `tensim inspect FILE` shows what a file holds.
    Compare(compare::CompareArgs),
    /// All-pairs similarity matrix over checkpoints (files, globs or folders).
    ///
    /// Checkpoints are ordered by the step number in their names unless --no-sort. Finished
    /// tiles are kept in OUT.tiles/ (named by hashes of the models as loaded, with checksums):
    /// re-running the same command resumes, and a changed checkpoint (or description) recomputes
    /// only its own tiles. Tensor
    /// similarity of one-bilinear-layer models runs as stacked GEMMs; deeper models pair by pair.
    Matrix(matrix::MatrixArgs),
    /// Split a similarity matrix (.npy) into K contiguous phases with the least within-phase
    /// dissimilarity Σ(1 − S) (exact, by dynamic programming), and optionally plot them.
    Phases(phases::PhasesArgs),
    /// Print a model's architecture, parameter count, polynomial degree and tensor names.
    Inspect(inspect::InspectArgs),
    /// Print a draft architecture description inferred from a checkpoint's tensor names and
    /// shapes, with what it could not tell (to check, save and pass with --arch).
    InitArch(init_arch::InitArchArgs),
    /// List the description layouts --arch reads.
    Layouts,
    /// Embed an architecture description into a safetensors file (checked first); a PyTorch
    /// checkpoint given as input is written out as safetensors.
    Pack(pack::PackArgs),
    /// Check the exact tensor inner product against Monte Carlo on your own models.
    ///
    /// Prints (1) the exact tensor similarity beside an independent-legs Monte-Carlo estimate of
    /// the same quantities (MATH.md §4.3 (i): they must agree within a few standard errors) and
    /// (2) a Monte-Carlo estimate of the Gaussian functional inner product E⟨f_a(x), f_b(x)⟩,
    /// x ~ N(0, I), with its standard error.
    Verify(verify::VerifyArgs),
    /// Draw a breakdown written by `compare --breakdown` (contributions of A's units or heads
    /// with B's), rows and columns ordered by the matching: a permuted copy shows a diagonal.
    PlotBreakdown(breakdown::PlotBreakdownArgs),
    /// Time this machine's GEMM and the all-pairs tensor-similarity matrix for the reference
    /// shapes; report pairs/s, achieved GFLOP/s and the ratio to the GEMM throughput.
    Bench(bench::BenchArgs),
    /// Built-in examples.
    Demo {
        #[command(subcommand)]
        which: demo::Demo,
    },
}

/// mimalloc, keeping freed memory for reuse (see [`keep_freed_memory`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its index in mimalloc's option enum (v2 and v3 alike).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never give freed memory back to the system (mimalloc's default does so after a delay, 1 s in
/// the bundled version): the attention steps allocate and free hundreds of MB each, and every
/// fresh page costs a fault and zeroing (at the paper's LM shape, a 4-checkpoint matrix 12.0–13.6
/// s with the default, 11.5–12.3 s without purging). The peak, which the memory estimate
/// bounds, stays the same. A `MIMALLOC_PURGE_DELAY` set by the user wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option write, before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Die quietly on a closed pipe (`tensim inspect … | head`) like other command-line tools.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let done = match Cli::parse().command {
        Command::Compare(a) => compare::run(a),
        Command::Matrix(a) => matrix::run(a),
        Command::Phases(a) => phases::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Pack(a) => pack::run(a),
        Command::InitArch(a) => init_arch::run(a),
        Command::Layouts => init_arch::layouts(),
        Command::Verify(a) => verify::run(a),
        Command::PlotBreakdown(a) => breakdown::plot_run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo { which } => demo::run(which),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
