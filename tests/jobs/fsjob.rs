//! fsjob IN OUT: a Rust program using `std::fs` only. Counts the words of
//! IN and writes a report to OUT, using on the way a directory it creates,
//! lists, renames files in and removes again; prints a summary to stdout.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: fsjob IN OUT");
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fsjob: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(input: &str, output: &str) -> std::io::Result<()> {
    let meta = fs::metadata(input)?;
    println!("{input}: {} bytes, file {}", meta.len(), meta.is_file());

    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines = 0u64;
    for line in BufReader::new(fs::File::open(input)?).lines() {
        lines += 1;
        for w in line?.split_whitespace() {
            *counts.entry(w.to_string()).or_default() += 1;
        }
    }
    println!("{lines} lines, {} distinct words", counts.len());

    // Work in a scratch directory next to the output, then clean it up.
    let work = format!("{output}.work");
    fs::create_dir_all(format!("{work}/nested"))?;
    fs::write(format!("{work}/a.txt"), b"first\n")?;
    let mut f = fs::OpenOptions::new().create(true).append(true).open(format!("{work}/a.txt"))?;
    f.write_all(b"second\n")?;
    drop(f);
    fs::copy(input, format!("{work}/nested/copy.txt"))?;
    fs::rename(format!("{work}/a.txt"), format!("{work}/b.txt"))?;
    let mut names: Vec<String> = fs::read_dir(&work)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    println!("work dir: {names:?}");
    let b = fs::read_to_string(format!("{work}/b.txt"))?;
    let copy_len = fs::metadata(format!("{work}/nested/copy.txt"))?.len();
    println!("b.txt {:?}, copy {} bytes", b, copy_len);
    if copy_len != meta.len() {
        return Err(std::io::Error::other("copy has the wrong size"));
    }
    fs::remove_file(format!("{work}/b.txt"))?;
    fs::remove_dir_all(&work)?;
    println!("work dir removed: {}", fs::metadata(&work).is_err());

    // Random access.
    let mut r = fs::File::open(input)?;
    r.seek(SeekFrom::Start(10))?;
    let mut buf = [0u8; 16];
    r.read_exact(&mut buf)?;
    println!("bytes 10..26: {:?}", String::from_utf8_lossy(&buf));
    let end = r.seek(SeekFrom::End(-5))?;
    println!("end-5 at {end}");

    match fs::read("does-not-exist") {
        Ok(_) => println!("does-not-exist exists"),
        Err(e) => println!("does-not-exist: {:?}", e.kind()),
    }

    let mut top: Vec<(&String, &u64)> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut out = fs::File::create(output)?;
    writeln!(out, "lines {lines}")?;
    writeln!(out, "distinct {}", counts.len())?;
    for (w, n) in top.iter().take(50) {
        writeln!(out, "{n} {w}")?;
    }
    out.sync_all()?;
    drop(out);
    let written = fs::read_to_string(output)?;
    println!("{output}: {} lines", written.lines().count());
    Ok(())
}
