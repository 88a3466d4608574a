//! The peer channel: framed, authenticated, replay-protected TCP between two
//! agents. Carries the simulated fibre, QKD post-processing and rekey control.
