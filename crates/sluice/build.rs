//! Links the `sluice` binary as a position-dependent executable (`-no-pie`) on Linux.
//!
//! Why: a position-independent executable is relocated by the dynamic loader at every
//! start. This binary carries ~300,000 relative relocations: the loader reads all of
//! `.rela.dyn` (~7 MiB) and writes every pointer in `.data.rel.ro` and `.got`
//! (~5 MiB) before `main`, and those pages stay resident for the life of the process.
//! That was a third of an idle `sluice serve`'s memory and of every `sluice --version`.
//! Linked at a fixed address, the pointers are final in the file and pages are read
//! only when used (measured: `sluice --version` peak RSS 26.7 → 15.7 MiB, debug build).
//!
//! The cost: the executable's own code is not at a random address (ASLR still moves the
//! stack, heap, mmaps and shared libraries). Build with `SLUICE_PIE=1` to keep a PIE.
fn main() {
    println!("cargo:rerun-if-env-changed=SLUICE_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let keep_pie = std::env::var("SLUICE_PIE").is_ok_and(|v| v == "1");
    if linux && !keep_pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
