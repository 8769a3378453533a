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
    let shift = |unit: &str| match unit.to_ascii_lowercase().as_str() {
        "" | "b" => Some(0),
        "k" | "kib" => Some(10),
        "m" | "mib" => Some(20),
        "g" | "gib" => Some(30),
        _ => None,
    };
    scaled(
        text,
        |unit| shift(unit).map(|shift| 1 << shift),
        "K, M, G",
        "256M",
    )
}

/// `500ms`, `30s`, `10m`, `1h`, in milliseconds.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let factor = |unit: &str| match unit {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    };
    scaled(text, factor, "ms, s, m, h", "10m")
}

/// `1000`, `50K`, `20M`, `50G`, `1T` (decimal multiples).
pub(crate) fn parse_count(text: &str) -> Result<u64, String> {
    let factor = |unit: &str| match unit.to_ascii_uppercase().as_str() {
        "" => Some(1),
        "K" => Some(1_000),
        "M" => Some(1_000_000),
        "G" => Some(1_000_000_000),
        "T" => Some(1_000_000_000_000),
        _ => None,
    };
    scaled(text, factor, "K, M, G, T", "50G")
}

/// `text` as digits (`_` between them allowed) and a unit `factor` knows, scaled by it; `units`
/// and `example` go in the message when it is not such a figure.
fn scaled(
    text: &str,
    factor: impl Fn(&str) -> Option<u64>,
    units: &str,
    example: &str,
) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let factor =
        factor(unit).ok_or_else(|| format!("`{text}`: unknown unit `{unit}` ({units})"))?;
    let value: u64 = digits
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a figure such as {example}"))?;
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
