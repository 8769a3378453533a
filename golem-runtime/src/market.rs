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
    /// Highest acceptable price of a billion units of fuel; `None` accepts any price.
    pub max_price_per_gfuel: Option<u64>,
}

impl Demand {
    /// The demand of subtasks that run under `limits`, at any price.
    pub fn for_limits(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes as u64,
            fuel: limits.fuel,
            max_price_per_gfuel: None,
        }
    }

    /// Whether `offer` satisfies this demand.
    pub fn accepts(&self, offer: &Offer) -> bool {
        offer.memory_bytes >= self.memory_bytes
            && offer.fuel >= self.fuel
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
}
