// The NIF links libpython: a RUNPATH to the interpreter pyo3 was configured with
// keeps Debian's /lib copy from winning at load time (LESSONS 7a).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
