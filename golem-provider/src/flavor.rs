//! Flavors on the command line: `NAME:memory=256M,fuel=50G,output=1M,log=64K,deadline=5m,price=10,concurrency=2`.

use golem_runtime::proto::message::Offer;

/// A flavor given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flavor(pub(crate) Offer);

/// Memory cap of a flavor unless its spec gives one.
pub(crate) const DEFAULT_MEMORY: u64 = 1 << 30;
/// Fuel cap of a flavor unless its spec gives one.
pub(crate) const DEFAULT_FUEL: u64 = 1_000_000_000_000;
/// Output cap of a flavor unless its spec gives one.
pub(crate) const DEFAULT_OUTPUT: u64 = 64 << 20;
/// Log cap (stdout and stderr each) of a flavor unless its spec gives one.
pub(crate) const DEFAULT_LOG: u64 = 64 << 10;
/// Deadline cap of a flavor unless its spec gives one: 10 minutes.
pub(crate) const DEFAULT_DEADLINE_MS: u64 = 10 * 60 * 1000;

impl Flavor {
    /// The flavor sold when none is given: every core, 1 GiB, no price.
    pub(crate) fn default_for(cores: u32) -> Self {
        Self(Offer {
            flavor: "default".into(),
            memory_bytes: DEFAULT_MEMORY,
            fuel: DEFAULT_FUEL,
            output_bytes: DEFAULT_OUTPUT,
            log_bytes: DEFAULT_LOG,
            deadline_ms: DEFAULT_DEADLINE_MS,
            price_per_gfuel: 0,
            concurrency: cores,
        })
    }
}

impl std::str::FromStr for Flavor {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (name, settings) = spec.split_once(':').unwrap_or((spec, ""));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "`{name}` is not a flavor name (letters, digits, '-', '_', '.')"
            ));
        }
        let mut offer = Self::default_for(1).0;
        offer.flavor = name.into();
        for setting in settings.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("`{setting}` is not KEY=VALUE"))?;
            match key {
                "memory" => offer.memory_bytes = parse_bytes(value)?,
                "fuel" => offer.fuel = parse_count(value)?,
                "output" => offer.output_bytes = parse_bytes(value)?,
                "log" => offer.log_bytes = parse_bytes(value)?,
                "deadline" => offer.deadline_ms = parse_millis(value)?,
                "price" => offer.price_per_gfuel = parse_count(value)?,
                "concurrency" => {
                    offer.concurrency = parse_count(value)?
                        .try_into()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("concurrency `{value}` must be 1 or more"))?;
                }
                other => {
                    return Err(format!(
                        "unknown flavor setting `{other}` (memory, fuel, output, log, deadline, \
                         price, concurrency)"
                    ));
                }
            }
        }
        Ok(Self(offer))
    }
}

/// `512K`, `256M`, `1G` (binary multiples; `KiB`, `MiB`, `GiB` also read) or plain bytes.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(format!("`{text}`: unknown size unit `{unit}` (K, M, G)")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256M"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `500ms`, `30s`, `10m`, `1h`, in milliseconds.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let factor: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("`{text}`: give a unit (ms, s, m, h), as in 10m")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a time such as 10m"))?;
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// `1000`, `50K`, `20M`, `50G`, `1T` (decimal multiples).
pub(crate) fn parse_count(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (K, M, G, T)")),
    };
    let value: u64 = digits
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a number such as 50G"))?;
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_parse_with_units_and_defaults() {
        let flavor: Flavor =
            "big:memory=2G,fuel=50G,output=1M,log=4K,deadline=90s,price=12,concurrency=4"
                .parse()
                .unwrap();
        assert_eq!(
            flavor.0,
            Offer {
                flavor: "big".into(),
                memory_bytes: 2 << 30,
                fuel: 50_000_000_000,
                output_bytes: 1 << 20,
                log_bytes: 4 << 10,
                deadline_ms: 90_000,
                price_per_gfuel: 12,
                concurrency: 4,
            }
        );
        let small: Flavor = "small".parse().unwrap();
        assert_eq!(small.0.memory_bytes, DEFAULT_MEMORY);
        assert_eq!(small.0.concurrency, 1);
        for bad in [
            "",
            "x:memory",
            "x:memory=2Q",
            "x:colour=red",
            "x:concurrency=0",
            "x:deadline=10",
            "x:deadline=5d",
            "a b",
        ] {
            assert!(bad.parse::<Flavor>().is_err(), "{bad} parsed");
        }
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_count("1_000"), Ok(1000));
        assert!(parse_bytes("99999999999G").is_err());
    }
}
