//! `moat user ...`: the password file (argon2id hashes; mosquitto_passwd files are read too).
//!
//! Exit codes: 0 ok, 1 the operation found a problem (the user exists on `add`, is missing on
//! `passwd` or `remove`), 2 usage or I/O error (returned as `Err`). Passwords come from a
//! prompt, a file or stdin, never from the command line; hashes and passwords are never
//! printed.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use moat_auth::{EditError, Password, PasswordFile};
use zeroize::Zeroizing;

/// The password file when `--file` is not given: `password_file = "passwd"` under the default
/// data dir.
const DEFAULT_FILE: &str = "moat-data/passwd";

/// Flags of `moat user`.
#[derive(Debug, clap::Args)]
pub(crate) struct UserArgs {
    /// The password file.
    #[arg(long, short = 'f', global = true, default_value = DEFAULT_FILE)]
    file: PathBuf,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Add a user (the file is created, mode 0600, if missing).
    Add(SetArgs),
    /// Change a user's password.
    Passwd(SetArgs),
    /// Remove a user.
    Remove(NameArgs),
    /// List the users, one per line.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
struct SetArgs {
    /// The user name (a certificate identity, on listeners that map it, is a user name too).
    name: String,
    /// Read the password from the first line of this file.
    #[arg(long, conflicts_with = "stdin")]
    password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    stdin: bool,
}

#[derive(Debug, clap::Args)]
struct NameArgs {
    /// The user name.
    name: String,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Also show each hash's scheme (argon2, sha512-pbkdf2, sha512).
    #[arg(long, short = 'l')]
    long: bool,
}

/// Runs `moat user`.
pub(crate) fn run(args: UserArgs) -> anyhow::Result<ExitCode> {
    let path = args.file.as_path();
    match args.command {
        UserCommand::Add(set) => {
            let mut file = load(path, true)?;
            if file.contains(&set.name) {
                return problem(format!(
                    "user {:?} already exists in {} (change its password with `moat user passwd`)",
                    set.name,
                    path.display()
                ));
            }
            moat_auth::password::validate_username(&set.name)?;
            let password = read_password(&set)?;
            edit(file.add(&set.name, &password))?;
            save(&file, path)?;
            println!("added user {:?} to {}", set.name, path.display());
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Passwd(set) => {
            let mut file = load(path, false)?;
            if !file.contains(&set.name) {
                return problem(no_user(&set.name, path));
            }
            let password = read_password(&set)?;
            edit(file.set_password(&set.name, &password))?;
            save(&file, path)?;
            println!(
                "changed the password of {:?} in {}",
                set.name,
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove(n) => {
            let mut file = load(path, false)?;
            if file.remove(&n.name).is_err() {
                return problem(no_user(&n.name, path));
            }
            save(&file, path)?;
            println!("removed user {:?} from {}", n.name, path.display());
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List(l) => {
            let file = load(path, false)?;
            for (name, scheme) in file.users() {
                if l.long {
                    println!("{name}\t{}", scheme.name());
                } else {
                    println!("{name}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn problem(msg: String) -> anyhow::Result<ExitCode> {
    eprintln!("moat: {msg}");
    Ok(ExitCode::from(1))
}

fn no_user(name: &str, path: &Path) -> String {
    format!("no user {name:?} in {}", path.display())
}

/// Loads the file; a missing one is an empty file when `create` is set.
fn load(path: &Path, create: bool) -> anyhow::Result<PasswordFile> {
    match PasswordFile::load(path) {
        Ok(f) => Ok(f),
        Err(e) if create && e.is_not_found() => Ok(PasswordFile::new()),
        Err(e) if e.is_not_found() => {
            bail!(
                "{e} (create it with `moat user add NAME --file {}`)",
                path.display()
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn save(file: &PasswordFile, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    file.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn edit(result: Result<(), EditError>) -> anyhow::Result<()> {
    result.map_err(Into::into)
}

/// The password from `--password-file`, `--stdin`, or a prompt on the terminal (twice).
fn read_password(args: &SetArgs) -> anyhow::Result<Password> {
    let text: Zeroizing<String> = if let Some(p) = &args.password_file {
        let mut s = Zeroizing::new(String::new());
        std::fs::File::open(p)
            .and_then(|mut f| f.read_to_string(&mut s))
            .with_context(|| format!("cannot read {}", p.display()))?;
        first_line(&s)
    } else if args.stdin {
        let mut s = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the password from standard input")?;
        first_line(&s)
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for the password: use --password-file FILE or --stdin");
        }
        let prompt = format!("Password for {}: ", args.name);
        let first =
            Zeroizing::new(rpassword::prompt_password(prompt).context("cannot read the password")?);
        let again = Zeroizing::new(
            rpassword::prompt_password("Again: ").context("cannot read the password")?,
        );
        if *first != *again {
            bail!("the passwords do not match");
        }
        first
    };
    if text.is_empty() {
        bail!("the password is empty");
    }
    Ok(Password::new(text.as_bytes()))
}

/// The first line without its line ending.
fn first_line(s: &str) -> Zeroizing<String> {
    let line = s.split('\n').next().unwrap_or("");
    Zeroizing::new(line.strip_suffix('\r').unwrap_or(line).to_owned())
}
