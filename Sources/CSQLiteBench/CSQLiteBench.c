#include "CSQLiteBench.h"
#include <sqlite3.h>
#include <stdio.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double csqlite_point_reads(const char *path, int population, int count) {
    sqlite3 *db;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) return -1;
    sqlite3_stmt *stmt;
    if (sqlite3_prepare_v2(db, "SELECT id, username, avatar, bot, updated_at, shard FROM users WHERE id = ?", -1, &stmt, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return -2;
    }
    char id[32];
    long found = 0;
    double start = now_seconds();
    for (int i = 0; i < count; i++) {
        int n = snprintf(id, sizeof id, "%d", i % population);
        sqlite3_bind_text(stmt, 1, id, n, SQLITE_STATIC);
        if (sqlite3_step(stmt) == SQLITE_ROW) {
            found += sqlite3_column_bytes(stmt, 1) > 0;
        }
        sqlite3_reset(stmt);
    }
    double elapsed = now_seconds() - start;
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return found == count ? count / elapsed : -3;
}

double csqlite_batched_upserts(const char *path, int rows, int batch) {
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) return -1;
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000;", NULL, NULL, NULL);
    sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, username TEXT NOT NULL, avatar TEXT, bot BOOLEAN NOT NULL, updated_at DOUBLE NOT NULL, shard INTEGER NOT NULL)", NULL, NULL, NULL);
    sqlite3_stmt *stmt;
    const char *sql = "INSERT INTO users (id, username, avatar, bot, updated_at, shard) VALUES (?, ?, NULL, 0, ?, 0) "
                      "ON CONFLICT(id) DO UPDATE SET username = excluded.username, updated_at = excluded.updated_at";
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return -2;
    }
    char id[32], name[48];
    double start = now_seconds();
    for (int done = 0; done < rows; done += batch) {
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        for (int i = done; i < done + batch && i < rows; i++) {
            int n = snprintf(id, sizeof id, "%d", i % 10000);
            int m = snprintf(name, sizeof name, "user%d-%d", i % 10000, i);
            sqlite3_bind_text(stmt, 1, id, n, SQLITE_STATIC);
            sqlite3_bind_text(stmt, 2, name, m, SQLITE_STATIC);
            sqlite3_bind_double(stmt, 3, (double)i);
            sqlite3_step(stmt);
            sqlite3_reset(stmt);
        }
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    double elapsed = now_seconds() - start;
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return rows / elapsed;
}
