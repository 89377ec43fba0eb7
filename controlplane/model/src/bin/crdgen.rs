//! Writes the CRD YAML generated from the types into `deploy/crds/` (or the
//! directory given as the only argument).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in lightpool_model::crd::crd_files()? {
        let path = dir.join(&name);
        std::fs::write(&path, yaml)?;
        println!("{}", path.display());
    }
    Ok(())
}
