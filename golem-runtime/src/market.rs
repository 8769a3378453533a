//! Matching a requestor's demand against providers' offers.

use crate::proto::message::Offer;
use crate::sandbox::Limits;

/// What a requestor needs from a provider, and what it pays at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Linear memory each subtask may need.
    pub memory_bytes: u64,
    /// Fuel each subtask may burn.
    pub fuel: u64,
    /// Largest output of a subtask.
    pub output_bytes: u64,
    /// Log bytes a subtask may have kept (stdout and stderr each).
    pub log_bytes: u64,
    /// Wall time a subtask may take, in milliseconds.
    pub deadline_ms: u64,
    /// Highest acceptable price of a billion units of fuel; `None` accepts any price.
    pub max_price_per_gfuel: Option<u64>,
}

impl Demand {
    /// The demand of subtasks that run under `limits`, at any price.
    pub fn for_limits(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes as u64,
            fuel: limits.fuel,
            output_bytes: limits.output_bytes as u64,
            log_bytes: limits.log_bytes as u64,
            // Rounded up: a deadline a millisecond part above the cap does not fit it.
            deadline_ms: u64::try_from(limits.deadline.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u64::MAX),
            max_price_per_gfuel: None,
        }
    }

    /// Whether `offer`'s flavor holds every limit of this demand, whatever its price. A
    /// provider runs a batch only in a flavor that holds its limits.
    pub fn fits(&self, offer: &Offer) -> bool {
        offer.memory_bytes >= self.memory_bytes
            && offer.fuel >= self.fuel
            && offer.output_bytes >= self.output_bytes
            && offer.log_bytes >= self.log_bytes
            && offer.deadline_ms >= self.deadline_ms
    }

    /// Whether `offer` satisfies this demand: it [fits](Self::fits) at an acceptable price.
    pub fn accepts(&self, offer: &Offer) -> bool {
        self.fits(offer)
            && self
                .max_price_per_gfuel
                .is_none_or(|ceiling| offer.price_per_gfuel <= ceiling)
    }

    /// The offer to buy among `offers`: the cheapest that satisfies the demand, the one with
    /// more concurrency among equals.
    pub fn choose<'a>(&self, offers: &'a [Offer]) -> Option<&'a Offer> {
        offers
            .iter()
            .filter(|offer| self.accepts(offer))
            .min_by_key(|offer| (offer.price_per_gfuel, std::cmp::Reverse(offer.concurrency)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(flavor: &str, memory_mb: u64, price: u64, concurrency: u32) -> Offer {
        Offer {
            flavor: flavor.into(),
            memory_bytes: memory_mb << 20,
            fuel: 1 << 40,
            output_bytes: 64 << 20,
            log_bytes: 64 << 10,
            deadline_ms: 60_000,
            price_per_gfuel: price,
            concurrency,
        }
    }

    #[test]
    fn the_cheapest_offer_that_fits_is_chosen() {
        let offers = [
            offer("small", 64, 1, 4),
            offer("large", 1024, 5, 2),
            offer("large-fast", 1024, 5, 8),
        ];
        let demand = Demand {
            memory_bytes: 256 << 20,
            fuel: 1 << 30,
            max_price_per_gfuel: Some(10),
            ..Demand::for_limits(&Limits::default())
        };
        assert_eq!(
            demand.choose(&offers).map(|o| o.flavor.as_str()),
            Some("large-fast")
        );
        let small = Demand {
            memory_bytes: 32 << 20,
            ..demand.clone()
        };
        assert_eq!(
            small.choose(&offers).map(|o| o.flavor.as_str()),
            Some("small")
        );
        let stingy = Demand {
            max_price_per_gfuel: Some(4),
            ..demand
        };
        assert_eq!(stingy.choose(&offers), None);
    }

    #[test]
    fn every_limit_must_fit_the_flavor() {
        let offers = [offer("std", 1024, 1, 1)];
        let fits = Demand::for_limits(&Limits::default());
        assert!(fits.choose(&offers).is_some());
        // Each limit one above the flavor's cap.
        type Raise = fn(&mut Demand);
        let above: [(&str, Raise); 5] = [
            ("output", |demand| demand.output_bytes = (64 << 20) + 1),
            ("log", |demand| demand.log_bytes = (64 << 10) + 1),
            ("deadline", |demand| demand.deadline_ms = 60_001),
            ("fuel", |demand| demand.fuel = (1 << 40) + 1),
            ("memory", |demand| demand.memory_bytes = (1 << 30) + 1),
        ];
        for (limit, raise) in above {
            let mut demand = fits.clone();
            raise(&mut demand);
            assert!(
                !demand.fits(&offers[0]),
                "{limit} above the flavor's cap fits"
            );
            assert_eq!(demand.choose(&offers), None, "{limit}");
        }
    }
}
