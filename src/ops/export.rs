//! `authstate export`: a company's state (or every company's) as the folder Baileys'
//! `useMultiFileAuthState` reads, the emergency way off PostgreSQL.
//!
//! One REPEATABLE READ snapshot is read page by page; files go to a temporary folder next to
//! the target, everything there is flushed to disk (one `syncfs` on Linux, else an fsync per
//! file and folder), then the folder is renamed into place and its parent fsynced, so the target
//! is either the old folder or the complete new one. While the snapshot is still open the
//! target is read back and every file compared byte for byte with the snapshot; the report
//! gives counts per type. Files are created 0600 in 0700 folders (they hold private keys):
//! export as the service's user, or hand the folder to it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::files::{self, CREDS_FILE};
use super::{io_err, sync_dir, Scope};
use crate::config::Config;
use crate::db::admin::{self as sql, KeyRow};
use crate::error::{Error, Result};
use crate::value::StoredValue;

/// Rows read from the database per round trip.
const PAGE: usize = 500;

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// One company (files directly in `dir`) or all (one sub-folder per company in `dir`).
    pub scope: Scope,
    /// The target folder.
    pub dir: PathBuf,
    /// Replace a non-empty `dir`.
    pub force: bool,
    /// Read and count, write nothing.
    pub dry_run: bool,
}

/// What [`export`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The database, without its password.
    pub database: String,
    /// The target folder.
    pub dir: PathBuf,
    /// Nothing was written.
    pub dry_run: bool,
    /// Every file was read back and equals the snapshot (false in a dry run).
    pub verified: bool,
    /// Per company.
    pub companies: Vec<CompanyExport>,
}

/// One company's part of an export.
#[derive(Debug, Clone, Serialize)]
pub struct CompanyExport {
    /// The company.
    pub company_id: String,
    /// Its folder (what `useMultiFileAuthState` is given).
    pub dir: PathBuf,
    /// Whether `creds.json` was written (without creds Baileys starts a new login).
    pub creds: bool,
    /// Keys written.
    pub keys: u64,
    /// Keys written per type.
    pub per_type: BTreeMap<String, u64>,
    /// Bytes of all files.
    pub bytes: u64,
    /// Keys whose file name does not give the id back (fine for Baileys, which looks files up
    /// by id; `authstate import` of this folder could not restore them). Empty for the ids
    /// Baileys 7 writes.
    pub not_reimportable: Vec<String>,
}

/// Exports per `opts` from the database of `config`. See the module documentation.
pub async fn export(config: &Config, opts: &ExportOptions) -> Result<ExportReport> {
    opts.scope.validate()?;
    check_target(&opts.dir, opts.force)?;
    let mut client = crate::db::plain_client(config).await?;
    let tx = sql::snapshot(&mut client).await?;
    if !sql::schema_exists(&tx).await? {
        return Err(Error::not_found(format!(
            "{} has no authstate tables (run `authstate migrate` on a database that holds the state)",
            config.describe()
        )));
    }
    let companies = opts.scope.companies(&tx).await?;
    // Company ids name folders: one written by hand with '/' or '..' must not escape --dir.
    let bad: Vec<&String> = companies
        .iter()
        .filter(|c| crate::validate::company_id(c).is_err())
        .collect();
    if !bad.is_empty() {
        return Err(Error::database(format!(
            "company ids that cannot name a folder: {bad:?}; export the others with --company"
        )));
    }
    let mut report = ExportReport {
        database: config.describe(),
        dir: opts.dir.clone(),
        dry_run: opts.dry_run,
        verified: false,
        companies: Vec::with_capacity(companies.len()),
    };
    let folder_of = |base: &Path, company: &str| match opts.scope {
        Scope::Company(_) => base.to_path_buf(),
        Scope::All => base.join(company),
    };

    if opts.dry_run {
        for company in &companies {
            let dir = folder_of(&opts.dir, company);
            report
                .companies
                .push(write_company(&tx, company, &dir, None).await?);
        }
        tx.commit().await?;
        return Ok(report);
    }

    let parent = parent_of(&opts.dir)?;
    std::fs::create_dir_all(&parent).map_err(|e| io_err("create", &parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.export-", file_name_of(&opts.dir)?))
        .tempdir_in(&parent)
        .map_err(|e| io_err("create a temporary folder in", &parent, e))?;
    for company in &companies {
        let dir = folder_of(tmp.path(), company);
        if dir != tmp.path() {
            std::fs::create_dir(&dir).map_err(|e| io_err("create", &dir, e))?;
        }
        let mut c = write_company(&tx, company, &dir, Some(&dir)).await?;
        c.dir = folder_of(&opts.dir, company);
        report.companies.push(c);
    }
    sync_tree(tmp.path())?;
    let tmp = tmp.keep();
    if let Err(e) = replace_dir(&tmp, &opts.dir, opts.force) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&parent)?;

    for c in &report.companies {
        verify_company(&tx, &c.company_id, &c.dir).await?;
    }
    tx.commit().await?;
    report.verified = true;
    Ok(report)
}

/// Refuses a target that is a file, or a non-empty folder unless `force`.
fn check_target(dir: &Path, force: bool) -> Result<()> {
    if dir.as_os_str().is_empty() {
        return Err(Error::invalid("--dir must not be empty"));
    }
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(Error::invalid(format!(
            "{} exists and is not a folder",
            dir.display()
        ))),
        Ok(_) => {
            let n = std::fs::read_dir(dir)
                .map_err(|e| io_err("read", dir, e))?
                .count();
            if n > 0 && !force {
                return Err(Error::invalid(format!(
                    "{} is not empty ({n} entries); choose an empty folder or pass --force to replace it",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", dir, e)),
    }
}

fn parent_of(dir: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).map_err(|e| io_err("resolve", dir, e))?;
    abs.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::invalid(format!("{} has no parent folder", dir.display())))
}

fn file_name_of(dir: &Path) -> Result<String> {
    let abs = std::path::absolute(dir).map_err(|e| io_err("resolve", dir, e))?;
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::invalid(format!("{} names no folder", dir.display())))
}

/// Puts the finished folder `tmp` at `dir`: a rename onto a missing or empty folder, else
/// (only with `force`) the old folder is renamed aside first and removed after.
fn replace_dir(tmp: &Path, dir: &Path, force: bool) -> Result<()> {
    match std::fs::rename(tmp, dir) {
        Ok(()) => return Ok(()),
        // Something was written into the target since it was checked: not ours to replace.
        Err(e) if !dir.exists() || !force => return Err(io_err("rename into place", dir, e)),
        Err(_) => {}
    }
    let aside = PathBuf::from(format!("{}.replaced", tmp.display()));
    std::fs::rename(dir, &aside).map_err(|e| io_err("move aside", dir, e))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        // Put the old folder back: the target must never be left missing.
        let _ = std::fs::rename(&aside, dir);
        return Err(io_err("rename into place", dir, e));
    }
    std::fs::remove_dir_all(&aside).map_err(|e| io_err("remove the replaced", &aside, e))
}

/// Reads one company from the snapshot and writes its files into `out` (counts only when
/// `None`).
async fn write_company(
    tx: &tokio_postgres::Transaction<'_>,
    company: &str,
    dir: &Path,
    out: Option<&Path>,
) -> Result<CompanyExport> {
    let mut c = CompanyExport {
        company_id: company.to_string(),
        dir: dir.to_path_buf(),
        creds: false,
        keys: 0,
        per_type: BTreeMap::new(),
        bytes: 0,
        not_reimportable: Vec::new(),
    };
    if let Some(text) = sql::creds(tx, company).await? {
        let creds = StoredValue::from_db(&text)
            .map_err(|e| e.context(format!("company {company}: creds")))?;
        if let Some(out) = out {
            write_file(&out.join(CREDS_FILE), creds.as_str())?;
        }
        c.creds = true;
        c.bytes += creds.len() as u64;
    }
    let mut names = HashSet::new();
    sql::for_each_key_page(tx, company, PAGE, |rows| {
        for row in rows {
            let (name, value) = file_of(company, &row)?;
            if !names.insert(name.clone()) {
                return Err(Error::invalid(format!(
                    "company {company}: two keys map to the file {name:?} (Baileys' file names turn ':' into '-'); key {} {:?} cannot be exported",
                    row.key_type, row.key_id
                )));
            }
            if let Some(out) = out {
                write_file(&out.join(&name), value.as_str())?;
            }
            if !files::round_trips(&row.key_type, &row.key_id) && c.not_reimportable.len() < 100 {
                c.not_reimportable
                    .push(format!("{} {}", row.key_type, row.key_id));
            }
            c.keys += 1;
            c.bytes += value.len() as u64;
            *c.per_type.entry(row.key_type).or_default() += 1;
        }
        Ok(())
    })
    .await?;
    if !c.creds && c.keys == 0 {
        return Err(Error::not_found(format!("company {company} has no state")));
    }
    Ok(c)
}

fn file_of(company: &str, row: &KeyRow) -> Result<(String, StoredValue)> {
    let value = StoredValue::from_db(&row.value).map_err(|e| {
        e.context(format!(
            "company {company} type {} id {:?}",
            row.key_type, row.key_id
        ))
    })?;
    Ok((files::key_file_name(&row.key_type, &row.key_id), value))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    // Private keys: readable by the owner only (the temporary folder is 0700 too).
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut f = open.open(path).map_err(|e| io_err("create", path, e))?;
    // Made durable all at once by `sync_tree` before the rename.
    f.write_all(text.as_bytes())
        .map_err(|e| io_err("write", path, e))
}

/// Makes every file and folder under `dir` durable. On Linux one `syncfs(2)` of its file
/// system: an fsync per file costs milliseconds each, hours for millions of keys.
#[cfg(target_os = "linux")]
fn sync_tree(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| io_err("open", dir, e))?;
    rustix::fs::syncfs(&d).map_err(|e| io_err("syncfs", dir, e.into()))
}

/// Makes every file and folder under `dir` durable, one fsync each.
#[cfg(not(target_os = "linux"))]
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("read", dir, e))? {
        let path = entry.map_err(|e| io_err("read", dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err("fsync", &path, e))?;
        }
    }
    sync_dir(dir)
}

/// Reads the company's folder back and compares every file with the snapshot, byte for byte;
/// a missing, different or extra file fails the export.
async fn verify_company(
    tx: &tokio_postgres::Transaction<'_>,
    company: &str,
    dir: &Path,
) -> Result<()> {
    let fail = |what: String| Error::internal(format!("export verification failed: {what}"));
    let mut expected: HashSet<String> = HashSet::new();
    if let Some(text) = sql::creds(tx, company).await? {
        let creds = StoredValue::from_db(&text)?;
        compare(&dir.join(CREDS_FILE), creds.as_str()).map_err(fail)?;
        expected.insert(CREDS_FILE.to_string());
    }
    sql::for_each_key_page(tx, company, PAGE, |rows| {
        for row in rows {
            let (name, value) = file_of(company, &row)?;
            compare(&dir.join(&name), value.as_str()).map_err(fail)?;
            expected.insert(name);
        }
        Ok(())
    })
    .await?;
    let mut extra = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("read", dir, e))? {
        let entry = entry.map_err(|e| io_err("read", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !expected.contains(&name) {
            extra.push(name);
        }
    }
    if !extra.is_empty() {
        return Err(fail(format!(
            "{}: unexpected files {extra:?}",
            dir.display()
        )));
    }
    Ok(())
}

fn compare(path: &Path, want: &str) -> std::result::Result<(), String> {
    match std::fs::read(path) {
        Ok(got) if got == want.as_bytes() => Ok(()),
        Ok(got) => Err(format!(
            "{} holds {} bytes that differ from the database's {} bytes",
            path.display(),
            got.len(),
            want.len()
        )),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}
