//! Where a site is, how far apart two sites are, and which sites answer a service name.
//!
//! Sites give their position as the cluster labels `lat` and `long`, in decimal degrees.
//! A Kubernetes label value may not begin with `-`, so south and west are written with a
//! hemisphere letter (`lat=33.87S`, `long=73.99W`); a plain number is north or east.

use std::collections::BTreeMap;
use std::fmt;

/// The label holding a site's latitude.
pub const LAT_LABEL: &str = "lat";
/// The label holding a site's longitude.
pub const LONG_LABEL: &str = "long";

/// Sites whose distance is within this many kilometres of the nearest one, or within
/// [`TIE_FRACTION`] of it, whichever is more, are "about equally near" and all answered.
pub const TIE_KM: f64 = 50.0;
pub const TIE_FRACTION: f64 = 0.10;
/// At most this many sites in one answer: enough to spread load, few enough for one UDP
/// message with a handful of addresses each.
pub const MAX_SITES: usize = 4;

const EARTH_RADIUS_KM: f64 = 6371.0;

/// A position on the earth, in degrees (north and east positive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub long: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error(
        "{label}={value:?} is not a {what}: write decimal degrees, with N/S (latitude) or E/W (longitude) for the hemisphere, e.g. 55.68N or 73.99W"
    )]
    NotDegrees {
        label: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{label}={value:?} is out of range: {what} is between -{max} and {max} degrees")]
    OutOfRange {
        label: &'static str,
        value: String,
        what: &'static str,
        max: u32,
    },
    #[error("label {present} is set but {missing} is not: a site's position needs both")]
    HalfSet {
        present: &'static str,
        missing: &'static str,
    },
}

impl Location {
    /// The site's position from its labels: `None` when neither label is set.
    pub fn from_labels(
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Location>, LocationError> {
        match (labels.get(LAT_LABEL), labels.get(LONG_LABEL)) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(LocationError::HalfSet {
                present: LAT_LABEL,
                missing: LONG_LABEL,
            }),
            (None, Some(_)) => Err(LocationError::HalfSet {
                present: LONG_LABEL,
                missing: LAT_LABEL,
            }),
            (Some(lat), Some(long)) => Ok(Some(Location {
                lat: parse_degrees(LAT_LABEL, lat, Axis::Latitude)?,
                long: parse_degrees(LONG_LABEL, long, Axis::Longitude)?,
            })),
        }
    }

    /// Parses a latitude and a longitude given apart (flags): signed degrees or hemisphere letters.
    pub fn parse(lat: &str, long: &str) -> Result<Location, LocationError> {
        Ok(Location {
            lat: parse_degrees(LAT_LABEL, lat, Axis::Latitude)?,
            long: parse_degrees(LONG_LABEL, long, Axis::Longitude)?,
        })
    }

    /// Great-circle distance in kilometres (haversine, on a sphere of the earth's mean radius).
    pub fn distance_km(self, other: Location) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlong = (other.long - self.long).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlong / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ns, ew) = (
            if self.lat < 0.0 { 'S' } else { 'N' },
            if self.long < 0.0 { 'W' } else { 'E' },
        );
        write!(f, "{}{ns} {}{ew}", self.lat.abs(), self.long.abs())
    }
}

#[derive(Clone, Copy)]
enum Axis {
    Latitude,
    Longitude,
}

fn parse_degrees(label: &'static str, value: &str, axis: Axis) -> Result<f64, LocationError> {
    let (what, max, positive, negative) = match axis {
        Axis::Latitude => ("latitude", 90, 'N', 'S'),
        Axis::Longitude => ("longitude", 180, 'E', 'W'),
    };
    let not_degrees = || LocationError::NotDegrees {
        label,
        value: value.to_owned(),
        what,
    };
    let text = value.trim();
    let (number, sign) = match text.chars().last() {
        Some(c) if c.eq_ignore_ascii_case(&positive) => (&text[..text.len() - 1], 1.0),
        Some(c) if c.eq_ignore_ascii_case(&negative) => (&text[..text.len() - 1], -1.0),
        _ => (text, 1.0),
    };
    // A hemisphere letter and a sign together would say the direction twice.
    if sign < 0.0 && number.starts_with(['-', '+']) {
        return Err(not_degrees());
    }
    let degrees: f64 = number.trim().parse().map_err(|_| not_degrees())?;
    if !degrees.is_finite() {
        return Err(not_degrees());
    }
    let degrees = degrees * sign;
    if degrees.abs() > f64::from(max) {
        return Err(LocationError::OutOfRange {
            label,
            value: value.to_owned(),
            what,
            max,
        });
    }
    Ok(degrees)
}

/// A site that runs the service asked for and may answer for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a, A> {
    pub cluster: &'a str,
    pub location: Option<Location>,
    pub addresses: A,
}

/// One chosen site, with its distance from the asker when both positions are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen<'a, A> {
    pub cluster: &'a str,
    pub distance_km: Option<f64>,
    pub addresses: A,
}

/// The sites that answer a name asked from `origin`: the nearest one and every other that is
/// about as near (see [`TIE_KM`]), at most [`MAX_SITES`], nearest first.
///
/// Sites without a position come after every site with one and are chosen only when none
/// has one; an asker without a position gets the sites in name order. Either way the choice
/// is the same for the same table, so answers do not flap between equals.
pub fn choose<'a, A>(
    origin: Option<Location>,
    candidates: Vec<Candidate<'a, A>>,
) -> Vec<Chosen<'a, A>> {
    let mut ranked: Vec<Chosen<'a, A>> = candidates
        .into_iter()
        .map(|c| Chosen {
            cluster: c.cluster,
            distance_km: origin.zip(c.location).map(|(o, l)| o.distance_km(l)),
            addresses: c.addresses,
        })
        .collect();
    ranked.sort_by(|a, b| match (a.distance_km, b.distance_km) {
        (Some(x), Some(y)) => x.total_cmp(&y).then_with(|| a.cluster.cmp(b.cluster)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cluster.cmp(b.cluster),
    });
    // No distances at all (`None`): every site is as near as any other.
    let band = ranked
        .first()
        .and_then(|c| c.distance_km)
        .map(|nearest| nearest + TIE_KM.max(nearest * TIE_FRACTION));
    ranked
        .into_iter()
        .take_while(|c| match (band, c.distance_km) {
            (Some(limit), Some(d)) => d <= limit,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .take(MAX_SITES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COPENHAGEN: Location = Location {
        lat: 55.68,
        long: 12.57,
    };
    const BERLIN: Location = Location {
        lat: 52.52,
        long: 13.40,
    };
    const LISBON: Location = Location {
        lat: 38.72,
        long: -9.14,
    };

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn positions_read_from_labels_with_hemisphere_letters() {
        let at = |lat, long| Location::from_labels(&labels(&[("lat", lat), ("long", long)]));
        assert_eq!(at("55.68", "12.57"), Ok(Some(COPENHAGEN)));
        assert_eq!(at("55.68N", "12.57e"), Ok(Some(COPENHAGEN)));
        assert_eq!(at("38.72", "9.14W"), Ok(Some(LISBON)));
        assert_eq!(
            at("33.87S", "151.21E"),
            Ok(Some(Location {
                lat: -33.87,
                long: 151.21
            }))
        );
        assert_eq!(
            Location::from_labels(&labels(&[("Region", "Europe")])),
            Ok(None)
        );
        assert_eq!(
            Location::parse("-33.87", "-70.5"),
            Ok(Location {
                lat: -33.87,
                long: -70.5
            })
        );
    }

    #[test]
    fn bad_positions_say_what_is_wrong() {
        let at = |lat, long| Location::from_labels(&labels(&[("lat", lat), ("long", long)]));
        let message = at("north", "12").unwrap_err().to_string();
        assert!(
            message.contains("lat=\"north\" is not a latitude"),
            "{message}"
        );
        let message = at("91", "12").unwrap_err().to_string();
        assert!(message.contains("between -90 and 90"), "{message}");
        let message = at("50", "181E").unwrap_err().to_string();
        assert!(message.contains("between -180 and 180"), "{message}");
        assert!(at("-5S", "1").is_err(), "sign and letter together");
        assert!(at("NaN", "1").is_err());
        assert!(at("inf", "1").is_err());
        assert!(at("5N", "5N").is_err(), "N is not a longitude's letter");
        let message = Location::from_labels(&labels(&[("lat", "1")]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("long is not"), "{message}");
    }

    #[test]
    fn distances_are_great_circle() {
        let d = COPENHAGEN.distance_km(BERLIN);
        assert!((d - 355.0).abs() < 5.0, "Copenhagen–Berlin {d}");
        let d = COPENHAGEN.distance_km(LISBON);
        assert!((d - 2480.0).abs() < 20.0, "Copenhagen–Lisbon {d}");
        assert_eq!(BERLIN.distance_km(BERLIN), 0.0);
        // Across the date line the short way round.
        let west = Location {
            lat: 0.0,
            long: 179.5,
        };
        let east = Location {
            lat: 0.0,
            long: -179.5,
        };
        assert!(west.distance_km(east) < 112.0);
    }

    fn candidate(cluster: &str, location: Option<Location>) -> Candidate<'_, ()> {
        Candidate {
            cluster,
            location,
            addresses: (),
        }
    }

    fn names(chosen: &[Chosen<'_, ()>]) -> Vec<String> {
        chosen.iter().map(|c| c.cluster.to_owned()).collect()
    }

    #[test]
    fn the_nearest_site_answers() {
        let sites = vec![
            candidate("lisbon", Some(LISBON)),
            candidate("berlin", Some(BERLIN)),
            candidate("nowhere", None),
        ];
        assert_eq!(names(&choose(Some(COPENHAGEN), sites.clone())), ["berlin"]);
        assert_eq!(names(&choose(Some(LISBON), sites.clone())), ["lisbon"]);
        // Only a site without a position runs it: it is still an answer.
        assert_eq!(
            names(&choose(Some(COPENHAGEN), vec![candidate("nowhere", None)])),
            ["nowhere"]
        );
        assert!(choose::<()>(Some(COPENHAGEN), Vec::new()).is_empty());
    }

    #[test]
    fn sites_about_as_near_are_answered_together() {
        let near = |km_north: f64| Location {
            lat: BERLIN.lat + km_north / 111.2,
            long: BERLIN.long,
        };
        let sites = vec![
            candidate("berlin-1", Some(BERLIN)),
            candidate("berlin-2", Some(near(10.0))),
            candidate("potsdam", Some(near(-30.0))),
            candidate("lisbon", Some(LISBON)),
        ];
        // From Copenhagen, ~355 km: the band is 50 km, so all three around Berlin.
        let chosen = choose(Some(COPENHAGEN), sites.clone());
        assert_eq!(names(&chosen), ["berlin-2", "berlin-1", "potsdam"]);
        assert!(chosen[0].distance_km < chosen[1].distance_km);
        // From far away the band is a tenth of the distance; still never Lisbon from Oslo.
        let oslo = Location {
            lat: 59.91,
            long: 10.75,
        };
        assert!(!names(&choose(Some(oslo), sites.clone())).contains(&"lisbon".to_owned()));
        // At most MAX_SITES.
        let many: Vec<_> = (0..10).map(|_| candidate("same", Some(BERLIN))).collect();
        assert_eq!(choose(Some(COPENHAGEN), many).len(), MAX_SITES);
    }

    #[test]
    fn an_asker_without_a_position_gets_sites_in_name_order() {
        let sites = vec![
            candidate("b", Some(BERLIN)),
            candidate("a", Some(LISBON)),
            candidate("c", None),
        ];
        assert_eq!(names(&choose(None, sites)), ["a", "b", "c"]);
    }
}
