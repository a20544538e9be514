//! Where the real parts' binaries are: the directory `scripts/install-tools` fills.

use std::path::PathBuf;

use crate::Error;

#[derive(Debug, Clone)]
pub struct Tools {
    pub dir: PathBuf,
}

impl Tools {
    /// `$OPTIKON_TOOLS`, else `$XDG_CACHE_HOME/optikon/bin`, else `~/.cache/optikon/bin`.
    pub fn locate() -> Self {
        let dir = std::env::var_os("OPTIKON_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("optikon/bin"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/optikon/bin"))
            })
            .unwrap_or_else(|| PathBuf::from(".cache/optikon/bin"));
        Tools { dir }
    }

    /// The path of a tool, or an error that says how to install it.
    pub fn get(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::MissingTool {
                name: name.to_owned(),
                dir: self.dir.clone(),
            })
        }
    }
}
