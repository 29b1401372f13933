"""featurestore: one definition of each feature (dbt), an offline history and an online snapshot."""
