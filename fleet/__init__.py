"""The fleet: many hosts' runs analyzed in parallel on Dask distributed, into one
hive-partitioned Parquet dataset that DuckDB queries (docs/fleet.md)."""
