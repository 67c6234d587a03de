#ifndef CSQLITEBENCH_H
#define CSQLITEBENCH_H

/// The baselines for scripts/bench.sh: the user cache's two hot operations done in plain C on the same schema.

/// Point reads by primary key through one prepared statement, ids 0..<population cycled, `count` times.
/// Returns reads per second, or a negative number on error.
double csqlite_point_reads(const char *path, int population, int count);

/// Upserts of `rows` users in transactions of `batch`, through one prepared statement. Returns rows per second.
double csqlite_batched_upserts(const char *path, int rows, int batch);

#endif
