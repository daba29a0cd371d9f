// Test and bench binaries of this crate link libpython: give them a RUNPATH to the
// interpreter pyo3 was configured with, so Debian's /lib copy never wins at run time
// (LESSONS 7a). The interpreter's path is also recorded so that the embedded
// interpreter can point `sys.executable` at a real Python (LESSONS 7d').
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    // `#[cfg(Py_3_11)]` and friends, for C API calls newer than 3.10.
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    if let Some(executable) = config.executable() {
        println!("cargo:rustc-env=ERLANG_PYTHON_BUILD_EXECUTABLE={executable}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
