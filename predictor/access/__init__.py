"""Party 0 decides who sees a patient's image: enrolled doctors, proving themselves with
their own key, on cases where the marketplace granted them a seat, within the clinic's caps."""
