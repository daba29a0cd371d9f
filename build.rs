// Test and bench binaries of this crate link libpython: give them a RUNPATH to the
// interpreter pyo3 was configured with, so Debian's /lib copy never wins at run time.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
