//! The class map of SuperTraffic-10: which class of which source is which common sign type.
//!
//! Text format, one mapping per line, `#` starts a comment line:
//! `common_type,source,source_class,description`. `source` is `gtsrb`, `bts` or `dfg`;
//! `source_class` is the numeric `ClassId` for GTSRB (0..=42) and BelgiumTSC (0..=61) and the
//! category *name* for DFG (e.g. `II-2`; DFG's JSON numbers its categories, the names are the
//! Slovenian sign codes and do not depend on the numbering). The description is free text. A
//! source class may appear once; classes not listed are not used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::sha256_hex;
use crate::traffic::sources::Source;

/// One line of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The common sign type, e.g. `stop`.
    pub common: String,
    /// The source dataset.
    pub source: Source,
    /// The source's class id (GTSRB/BTS) or category name (DFG).
    pub source_class: String,
    /// Free-text description.
    pub description: String,
}

/// A parsed class map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    /// All mappings, in file order.
    pub mappings: Vec<Mapping>,
    /// sha256 of the map's text, recorded in build manifests.
    pub sha256: String,
    lookup: BTreeMap<(Source, String), String>,
}

impl ClassMap {
    /// Parses map text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let mut mappings = Vec::new();
        let mut lookup = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |detail: String| Error::malformed(origin, format!("line {}: {detail}", i + 1));
            let fields: Vec<&str> = line.splitn(4, ',').map(str::trim).collect();
            if fields.len() < 3 {
                return Err(at(format!(
                    "expected `common_type,source,source_class[,description]`, found `{line}`"
                )));
            }
            let common = fields[0];
            if common.is_empty()
                || !common
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(at(format!(
                    "common type must be [a-z0-9_]+, found `{common}`"
                )));
            }
            let source: Source = fields[1].parse().map_err(|_| {
                at(format!(
                    "source must be one of gtsrb, bts, dfg; found `{}`",
                    fields[1]
                ))
            })?;
            let class = fields[2].to_string();
            if let Some(max) = source.n_numeric_classes() {
                match class.parse::<usize>() {
                    Ok(id) if id < max => {}
                    _ => {
                        return Err(at(format!(
                            "{} class id must be an integer in 0..={}, found `{class}`",
                            source.name(),
                            max - 1
                        )))
                    }
                }
            } else if class.is_empty() {
                return Err(at("empty DFG category name".into()));
            }
            let key = (source, normalise_class(source, &class));
            if let Some(prev) = lookup.insert(key, common.to_string()) {
                return Err(at(format!(
                    "{} class `{class}` is mapped twice (to `{prev}` and `{common}`)",
                    source.name()
                )));
            }
            mappings.push(Mapping {
                common: common.to_string(),
                source,
                source_class: class,
                description: fields.get(3).unwrap_or(&"").to_string(),
            });
        }
        if mappings.is_empty() {
            return Err(Error::malformed(origin, "class map has no mappings"));
        }
        Ok(ClassMap {
            mappings,
            sha256: sha256_hex(text.as_bytes()),
            lookup,
        })
    }

    /// Reads and parses a map file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// The common type of `source`'s class `class`, if mapped.
    pub fn common_type(&self, source: Source, class: &str) -> Option<&str> {
        self.lookup
            .get(&(source, normalise_class(source, class)))
            .map(String::as_str)
    }

    /// All common types named in the map.
    pub fn common_types(&self) -> BTreeSet<&str> {
        self.mappings.iter().map(|m| m.common.as_str()).collect()
    }
}

/// Numeric ids compare as numbers (`00014` = `14`); DFG names as written.
fn normalise_class(source: Source, class: &str) -> String {
    match (source.n_numeric_classes(), class.trim().parse::<usize>()) {
        (Some(_), Ok(n)) => n.to_string(),
        _ => class.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("map.csv");
        let m = ClassMap::parse(
            "# c\nstop,gtsrb,14,Stop\nstop,dfg,II-2,Stop, with comma\nyield,bts,19\n",
            p,
        )
        .unwrap();
        assert_eq!(m.common_type(Source::Gtsrb, "00014"), Some("stop"));
        assert_eq!(m.common_type(Source::Dfg, "II-2"), Some("stop"));
        assert_eq!(m.common_type(Source::Bts, "19"), Some("yield"));
        assert_eq!(m.common_type(Source::Bts, "20"), None);
        assert_eq!(m.mappings[1].description, "Stop, with comma");
        for bad in [
            "stop,gtsrb,43,x",
            "stop,foo,1,x",
            "Stop,gtsrb,1",
            "stop,gtsrb",
            "a,bts,1\nb,bts,01",
            "",
        ] {
            let e = ClassMap::parse(bad, p).unwrap_err().to_string();
            assert!(e.contains("map.csv"), "{e}");
        }
    }

    #[test]
    fn checked_in_map_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/supertraffic10-classmap.csv");
        let m = ClassMap::from_path(&path).unwrap();
        for t in [
            "stop",
            "give_way",
            "priority_road",
            "no_entry",
            "pedestrian_crossing",
            "speed_limit_50",
            "no_parking",
        ] {
            assert!(m.common_types().contains(t), "{t} missing");
        }
        // Each common type used by at least one source and GTSRB's 43 classes are known ids.
        assert!(
            m.mappings
                .iter()
                .filter(|x| x.source == Source::Gtsrb)
                .count()
                >= 20
        );
    }
}
