//! Start-up of CPython inside a host process that loaded us with local symbol
//! scope (the BEAM loads NIFs that way).

use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyList;

/// What the host wants the interpreter to look like.
#[derive(Debug, Clone, Default)]
pub struct InterpreterConfig {
    /// Folders put in front of `sys.path` (our `python/` sources, the
    /// host's own paths), in this order.
    pub paths: Vec<PathBuf>,
    /// Site directories (a venv's site-packages): on `sys.path` where a
    /// venv's python has them (after `PYTHONPATH` and the standard library,
    /// before the base interpreter's site-packages), their `.pth` files read.
    pub site_dirs: Vec<PathBuf>,
    /// Whether the base interpreter's site-packages stay on `sys.path` (a
    /// venv made without `--system-site-packages` leaves them out).
    pub system_site_packages: bool,
    /// The Python interpreter `sys.executable` should name; `None` uses the one
    /// this crate was built against.
    pub executable: Option<PathBuf>,
}

/// Where start-up is; serialises it: `initialize` may be called again (an
/// application restart) and must then only add what is new.
static STARTUP: Mutex<Startup> = Mutex::new(Startup::NotYet);

enum Startup {
    NotYet,
    Started,
    /// CPython's own start failed half-way (it cannot be started again in
    /// this process): every later start gives this error.
    Failed(String),
}

/// Initialises CPython once (signal handlers off, GIL released afterwards) and
/// applies `config`. Calling it again keeps the running interpreter and only
/// adds paths that are not on `sys.path` yet.
pub fn initialize(config: &InterpreterConfig) -> Result<(), String> {
    let mut startup = STARTUP.lock().unwrap_or_else(|e| e.into_inner());
    if let Startup::Failed(reason) = &*startup {
        return Err(format!(
            "{reason} (CPython failed to start in this VM and cannot be started again)"
        ));
    }
    if let Startup::NotYet = *startup {
        let sigint_before = sigint_handler();
        promote_libpython_to_global_scope()?;
        let executable = config
            .executable
            .as_deref()
            .filter(|path| is_venv_of_this_python(path));
        let started = pre_initialize_utf8_mode_under_c_locale()
            .and_then(|()| initialize_from_config(executable));
        if let Err(reason) = started {
            *startup = Startup::Failed(reason.clone());
            return Err(reason);
        }
        // Python is up: pyo3 only records it.
        Python::initialize();
        *startup = Startup::Started;
        // This thread initialised Python: it is Python's main thread, where
        // `signal.signal` is allowed.
        Python::attach(|py| first_start_setup(py, sigint_before))
            .map_err(|e| format!("python start-up: {e}"))?;
        tracing::info!(version = Python::version_str(), "CPython initialised");
    }
    Python::attach(|py| apply_config(py, config)).map_err(|e| format!("python start-up: {e}"))
}

/// True once `initialize` has succeeded in this process.
pub fn is_initialized() -> bool {
    matches!(
        *STARTUP.lock().unwrap_or_else(|e| e.into_inner()),
        Startup::Started
    )
}

/// What only the first start does, on Python's main thread.
fn first_start_setup(py: Python<'_>, sigint_before: libc::sighandler_t) -> PyResult<()> {
    // Forking the VM copies beam.smp with one thread and no schedulers: the
    // child hangs (LESSONS 7d'). multiprocessing and ProcessPoolExecutor
    // start children with `sys.executable` instead.
    let multiprocessing = py.import("multiprocessing")?;
    let start_method = multiprocessing.call_method1("get_start_method", (true,))?;
    if start_method.is_none() {
        multiprocessing.call_method1("set_start_method", ("spawn",))?;
    }
    // The first import of CPython's `signal` module (multiprocessing's, just
    // now, or asyncio's later) takes SIGINT when the host left it at SIG_DFL
    // (`erl +B`): Ctrl-C would then only set a flag for a Python main thread
    // that never runs again. Give SIGINT back to the BEAM (LESSONS 2).
    let signal = py.import("signal")?;
    if sigint_before == libc::SIG_DFL && sigint_handler() != libc::SIG_DFL {
        signal.call_method1("signal", (libc::SIGINT, signal.getattr("SIG_DFL")?))?;
    }
    Ok(())
}

/// The current C-level handler of SIGINT.
fn sigint_handler() -> libc::sighandler_t {
    // SIGINT is a valid signal: this cannot fail.
    crate::io::signals::disposition(libc::SIGINT).unwrap_or(libc::SIG_DFL)
}

/// `config.site_dirs` on `sys.path` as a venv's python has them; the base
/// interpreter's site-packages (and the user's) out of it unless
/// `config.system_site_packages`.
fn add_site_dirs(
    py: Python<'_>,
    path: &Bound<'_, PyList>,
    config: &InterpreterConfig,
) -> PyResult<()> {
    if config.site_dirs.is_empty() {
        return Ok(());
    }
    let site = py.import("site")?;
    let mut base: Vec<String> = site.call_method0("getsitepackages")?.extract()?;
    base.push(site.call_method0("getusersitepackages")?.extract()?);
    let ours: Vec<String> = config
        .site_dirs
        .iter()
        .map(|dir| dir.to_string_lossy().into_owned())
        .collect();
    if !config.system_site_packages {
        for dir in base.iter().filter(|dir| !ours.contains(dir)) {
            while path.contains(dir.as_str())? {
                path.call_method1("remove", (dir.as_str(),))?;
            }
        }
    }
    for dir in &ours {
        if path.contains(dir.as_str())? {
            continue;
        }
        let mut position = path.len();
        for (index, entry) in path.iter().enumerate() {
            if entry
                .extract::<String>()
                .is_ok_and(|entry| base.contains(&entry))
            {
                position = index;
                break;
            }
        }
        path.insert(position, dir.as_str())?;
        // Reads its `.pth` files (the folder itself is on the path already),
        // whose folders `addsitedir` appends: moved right after the site
        // directory, where a venv's python has them (before the base
        // interpreter's site-packages).
        let before: Option<Vec<String>> = path.extract().ok();
        site.call_method1("addsitedir", (dir.as_str(),))?;
        if let Some(before) = before {
            // Best effort: a `sys.path` holding something else than text
            // keeps the order `addsitedir` made.
            if let Err(error) = move_after(path, dir, &before) {
                tracing::warn!(%error, "could not order a site directory's .pth folders");
            }
        }
    }
    Ok(())
}

/// Moves the `sys.path` entries that are not in `before` right after `dir`.
fn move_after(path: &Bound<'_, PyList>, dir: &str, before: &[String]) -> PyResult<()> {
    let after: Vec<String> = path.extract()?;
    let added: Vec<&String> = after
        .iter()
        .filter(|entry| !before.contains(entry))
        .collect();
    for entry in &added {
        path.call_method1("remove", (entry.as_str(),))?;
    }
    let at = path.index(dir)? + 1;
    for (offset, entry) in added.iter().enumerate() {
        path.insert(at + offset, entry.as_str())?;
    }
    Ok(())
}

fn apply_config(py: Python<'_>, config: &InterpreterConfig) -> PyResult<()> {
    let sys = py.import("sys")?;
    let path = sys.getattr("path")?.cast_into::<PyList>()?;
    for (position, folder) in config.paths.iter().enumerate() {
        let folder = folder.to_string_lossy();
        if !path.contains(folder.as_ref())? {
            path.insert(position, folder.as_ref())?;
        }
    }
    add_site_dirs(py, &path, config)?;
    if let Some(executable) = config.executable.clone().or_else(build_executable) {
        sys.setattr("executable", executable.to_string_lossy().as_ref())?;
    }
    // Embedded interpreters start without argv; argparse and friends expect one.
    if !sys.hasattr("argv")? {
        sys.setattr("argv", PyList::new(py, ["erlang_python"])?)?;
    }
    Ok(())
}

/// `Py_InitializeEx` alone uses CPython's "compat" pre-configuration, which
/// never turns on UTF-8 mode: under the C/POSIX locale (a bare CI machine, a
/// service manager) file names and stdio would then be ASCII. Pre-initialise
/// as the `python3` command does (PEP 540: UTF-8 mode under the C locale),
/// without coercing the locale of the whole VM.
fn pre_initialize_utf8_mode_under_c_locale() -> Result<(), String> {
    use pyo3::ffi;
    let mut preconfig = std::mem::MaybeUninit::<ffi::PyPreConfig>::zeroed();
    // SAFETY: InitPythonConfig fills every field of the struct it is given;
    // Py_PreInitialize runs before the interpreter exists, once (under
    // STARTUP), and copies the config.
    unsafe {
        ffi::PyPreConfig_InitPythonConfig(preconfig.as_mut_ptr());
        let preconfig = preconfig.assume_init_mut();
        preconfig.parse_argv = 0;
        preconfig.coerce_c_locale = 0;
        preconfig.coerce_c_locale_warn = 0;
        let status = ffi::Py_PreInitialize(preconfig);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err("CPython pre-initialisation failed".into());
        }
    }
    Ok(())
}

/// Starts CPython as the `python3` command would (PEP 587's Python
/// configuration: `PYTHONPATH` and friends read), with its signal handlers
/// off (the BEAM owns signals) and the VM's C stdio left as it is, then
/// releases the GIL. With `executable` (a venv's python) CPython finds the
/// venv as that python does: `sys.prefix` is the venv, its site-packages and
/// only its `.pth` files are read, the base interpreter's site-packages only
/// if its `pyvenv.cfg` says so.
fn initialize_from_config(executable: Option<&Path>) -> Result<(), String> {
    use pyo3::ffi;
    let executable = executable
        .map(|path| CString::new(path.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| "the Python executable's path holds a NUL byte".to_string())?;
    let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
    // SAFETY: InitPythonConfig fills every field of the zeroed struct it is
    // given; the fields set after it are plain ints or set through
    // SetBytesString, which copies the string; the config is cleared once,
    // after Py_InitializeFromConfig copied it. All of it runs once, before
    // any other thread uses Python (under STARTUP), on this thread, which
    // then holds the GIL until PyEval_SaveThread releases it.
    unsafe {
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        config.configure_c_stdio = 0;
        let mut status = match &executable {
            Some(path) => {
                ffi::PyConfig_SetBytesString(config, &mut config.executable, path.as_ptr())
            }
            None => ffi::PyStatus_Ok(),
        };
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(config);
        }
        ffi::PyConfig_Clear(config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(status_message(&status));
        }
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// Whether `executable` is the python of a venv made from the interpreter
/// this NIF is built against: a `pyvenv.cfg` beside it or one folder up
/// (where CPython looks) whose `home` is that interpreter's folder. Only
/// then does CPython start as it: it takes its prefix and standard library
/// from the venv's base, which must match the linked libpython (a venv of
/// another installation of Python 3.11 would load that one's stdlib). Any
/// other executable only names `sys.executable`.
fn is_venv_of_this_python(executable: &Path) -> bool {
    let Some(built) = build_executable().and_then(|path| std::fs::canonicalize(path).ok()) else {
        return false;
    };
    let Some(bin) = executable.parent() else {
        return false;
    };
    let config = [bin.join("pyvenv.cfg"), bin.join("../pyvenv.cfg")]
        .into_iter()
        .find_map(|path| std::fs::read_to_string(path).ok());
    let home = config.as_deref().and_then(|text| {
        text.lines().rev().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("home")
                .then(|| PathBuf::from(value.trim()))
        })
    });
    home.and_then(|home| std::fs::canonicalize(home).ok())
        .is_some_and(|home| built.parent() == Some(home.as_path()))
}

/// What a failed start-up step says.
fn status_message(status: &pyo3::ffi::PyStatus) -> String {
    let text = |ptr: *const std::ffi::c_char| {
        // SAFETY: a PyStatus's strings are null or static C strings.
        (!ptr.is_null()).then(|| {
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        })
    };
    match (text(status.func), text(status.err_msg)) {
        (Some(func), Some(message)) => format!("CPython start-up failed: {func}: {message}"),
        (_, Some(message)) => format!("CPython start-up failed: {message}"),
        _ => "CPython start-up failed".to_string(),
    }
}

fn build_executable() -> Option<PathBuf> {
    option_env!("ERLANG_PYTHON_BUILD_EXECUTABLE").map(PathBuf::from)
}

/// The BEAM dlopens NIFs with RTLD_LOCAL, so libpython's symbols are invisible
/// to the extension modules CPython loads later (`_asyncio`, `_ssl`, `math`):
/// they fail with "undefined symbol". Re-opening the already loaded libpython
/// with RTLD_GLOBAL makes its symbols global (LESSONS 1).
fn promote_libpython_to_global_scope() -> Result<(), String> {
    let loaded_from = loaded_libpython_path()?;
    let c_path = CString::new(loaded_from.clone()).map_err(|e| e.to_string())?;
    // SAFETY: RTLD_NOLOAD only bumps the reference count of an object that is
    // already mapped (libpython, which we are linked against), so no
    // initialisers run; the handle is kept for the life of the process.
    let handle = unsafe {
        libc::dlopen(
            c_path.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NOLOAD,
        )
    };
    if handle.is_null() {
        return Err(format!("cannot re-open {loaded_from} with global scope"));
    }
    Ok(())
}

/// The file libpython was actually loaded from (which may differ from what the
/// build saw if RUNPATH were missing), found from one of its own symbols.
fn loaded_libpython_path() -> Result<String, String> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let symbol = pyo3::ffi::Py_InitializeEx as *const c_void;
    // SAFETY: dladdr only reads the loader's tables and writes into `info`,
    // which is zero-initialised and large enough for a Dl_info.
    let found = unsafe { libc::dladdr(symbol, info.as_mut_ptr()) };
    // SAFETY: an all-zero Dl_info is a valid value (null pointers), and
    // dladdr only ever writes valid pointers into it.
    let info = unsafe { info.assume_init() };
    if found == 0 || info.dli_fname.is_null() {
        return Err("cannot find the loaded libpython (dladdr failed)".into());
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Ok(name.to_string_lossy().into_owned())
}
