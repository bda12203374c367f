/*
 * C test harness for include/authstate.h, run by scripts/test-c.sh against a real PostgreSQL.
 *
 *   AUTHSTATE_TEST_URL=<url of an empty database> test_harness
 *
 * Environment:
 *   AUTHSTATE_TEST_URL     database to use (required; the harness migrates it and writes rows
 *                          of the companies c-* into it)
 *   AUTHSTATE_PSQL         psql program used to insert raw rows (default: psql)
 *   AUTHSTATE_HARNESS_ITERS iterations per thread in the concurrency test (default 40; the
 *                          valgrind run uses fewer)
 *
 * Exits 0 when every check passed, 1 otherwise; each failure is printed with its line.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "authstate.h"

/* ---- a tiny check framework (thread-safe counters) ---------------------------------------- */

static atomic_int checks;
static atomic_int failures;

static const char *last_error_text(void) {
    static _Thread_local char buf[2048];
    authstate_last_error(buf, sizeof buf);
    return buf;
}

static void check_at(int ok, const char *file, int line, const char *fmt, ...) {
    atomic_fetch_add(&checks, 1);
    if (ok)
        return;
    atomic_fetch_add(&failures, 1);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

#define CHECK(cond, ...) check_at(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* Checks the status of a call; on a mismatch prints both statuses and the error text. */
#define EXPECT(call, want)                                                                      \
    do {                                                                                        \
        authstate_status got_ = (call);                                                         \
        authstate_status want_ = (want);                                                        \
        CHECK(got_ == want_, "%s -> %u (%s), want %u (%s); last error: %s", #call,              \
              (unsigned)got_, authstate_status_message(got_), (unsigned)want_,                 \
              authstate_status_message(want_), last_error_text());                             \
    } while (0)

#define CHECK_STR(got, want)                                                                    \
    do {                                                                                        \
        const char *g_ = (got), *w_ = (want);                                                   \
        CHECK(g_ && w_ && strcmp(g_, w_) == 0, "%s:\n   got  %s\n   want %s", #got,             \
              g_ ? g_ : "(null)", w_);                                                          \
    } while (0)

/* A pointer value no call may write: out-parameters must stay untouched on failure. */
static char sentinel_byte;
#define SENTINEL ((void *)&sentinel_byte)

/* ---- helpers --------------------------------------------------------------------------------- */

static const char *test_url;

static char *xstrdup_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = malloc((size_t)n + 1);
    if (!s)
        abort();
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Appends to a growable string. */
typedef struct {
    char *p;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = (b->len + (size_t)n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static char *base64(const unsigned char *d, size_t n) {
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (!out)
        abort();
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (i + 1 < n ? (unsigned)d[i + 1] << 8 : 0) |
                     (i + 2 < n ? d[i + 2] : 0);
        *o++ = a[v >> 18 & 63];
        *o++ = a[v >> 12 & 63];
        *o++ = i + 1 < n ? a[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? a[v & 63] : '=';
    }
    *o = 0;
    return out;
}

/* The canonical buffer node for bytes. */
static char *buffer_node(const unsigned char *d, size_t n) {
    char *b = base64(d, n);
    char *s = xstrdup_printf("{\"type\":\"Buffer\",\"data\":\"%s\"}", b);
    free(b);
    return s;
}

/* Runs SQL through psql (raw rows in every stored shape, written as older code wrote them). */
static int run_sql(const char *sql) {
    const char *psql = getenv("AUTHSTATE_PSQL");
    char *cmd = xstrdup_printf("'%s' -X -q -v ON_ERROR_STOP=1 -d '%s' >/dev/null",
                               psql ? psql : "psql", test_url);
    FILE *p = popen(cmd, "w");
    free(cmd);
    if (!p)
        return -1;
    fputs(sql, p);
    return pclose(p);
}

/* keys_get of one id; returns the JSON object text (caller frees) or NULL on failure. */
static char *get_one(authstate_session *s, const char *type, const char *id) {
    const char *ids[1] = {id};
    char *out = NULL;
    authstate_status st = authstate_keys_get(s, type, ids, 1, &out);
    CHECK(st == AUTHSTATE_OK, "keys_get(%s, %s) -> %s: %s", type, id,
          authstate_status_message(st), last_error_text());
    return st == AUTHSTATE_OK ? out : NULL;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_status_and_last_error(void) {
    /* Every status 0..12 has its own message; the names are the header's (a renamed or
     * removed status does not compile). */
    static const authstate_status all[] = {
        AUTHSTATE_OK,       AUTHSTATE_NOT_FOUND, AUTHSTATE_INVALID,   AUTHSTATE_UNAVAILABLE,
        AUTHSTATE_TIMEOUT,  AUTHSTATE_READ_ONLY, AUTHSTATE_INTERNAL,  AUTHSTATE_PANIC,
        AUTHSTATE_BACKLOG,  AUTHSTATE_LOCKED,    AUTHSTATE_MIGRATION, AUTHSTATE_DATABASE,
        AUTHSTATE_CLOSED,
    };
    const size_t n_all = sizeof all / sizeof all[0];
    CHECK(n_all == (size_t)AUTHSTATE_CLOSED + 1, "%zu named statuses", n_all);
    for (size_t i = 0; i < n_all; i++) {
        const char *m = authstate_status_message(all[i]);
        CHECK(all[i] == i, "status #%zu is %u", i, (unsigned)all[i]);
        CHECK(m && *m && strcmp(m, "unknown status") != 0, "message of %u: %s", (unsigned)all[i],
              m ? m : "(NULL)");
        for (size_t j = 0; m && j < i; j++)
            CHECK(strcmp(m, authstate_status_message(all[j])) != 0, "statuses %u and %zu share '%s'",
                  (unsigned)all[i], j, m);
    }
    CHECK_STR(authstate_status_message(AUTHSTATE_CLOSED + 1), "unknown status");
    CHECK_STR(authstate_status_message(UINT32_MAX), "unknown status");
    CHECK(AUTHSTATE_OK == 0 && AUTHSTATE_PANIC == 7 && AUTHSTATE_CLOSED == 12, "fixed numbers");

    /* A failure leaves text; the length is returned like snprintf; truncation is terminated. */
    EXPECT(authstate_store_migrate(NULL), AUTHSTATE_INVALID);
    size_t n = authstate_last_error(NULL, 0);
    CHECK(n > 0, "last error length after a failure");
    char *full = malloc(n + 1);
    CHECK(authstate_last_error(full, n + 1) == n && strlen(full) == n, "full copy");
    char small[5];
    memset(small, 'x', sizeof small);
    CHECK(authstate_last_error(small, sizeof small) == n && strlen(small) == 4 &&
              strncmp(small, full, 4) == 0,
          "truncated copy: '%s' of '%s'", small, full);
    char untouched = 'x';
    CHECK(authstate_last_error(&untouched, 0) == n && untouched == 'x', "len 0 writes nothing");
    free(full);
    /* Freeing NULL is fine and leaves the error alone. */
    authstate_string_free(NULL);
    authstate_session_close(NULL);
    authstate_store_close(NULL);
    CHECK(authstate_last_error(NULL, 0) == n, "NULL frees leave the error text");
}

static void test_open_bad_input(void) {
    authstate_store *st = SENTINEL;
    EXPECT(authstate_store_open(test_url, NULL), AUTHSTATE_INVALID);
    EXPECT(authstate_store_open("\xff\xfe", &st), AUTHSTATE_INVALID);
    EXPECT(authstate_store_open("postgres://u@h:notaport/db", &st), AUTHSTATE_INVALID);
    EXPECT(authstate_store_open("postgres://u@h/db?sslmode=bogus", &st),
           AUTHSTATE_INVALID);
    CHECK(st == SENTINEL, "out untouched on failure");
}

static void test_open_from_env(void) {
    /* NULL url: configuration from DATABASE_URL (set by main before any thread exists). */
    authstate_store *st = NULL;
    EXPECT(authstate_store_open(NULL, &st), AUTHSTATE_OK);
    CHECK(authstate_last_error(NULL, 0) == 0, "success clears the last error");
    authstate_session *se = NULL;
    if (st) {
        EXPECT(authstate_store_migrate(st), AUTHSTATE_OK); /* the first run creates the tables */
        EXPECT(authstate_session_open(st, "c-env", &se), AUTHSTATE_OK);
    }
    if (se) {
        char *out = SENTINEL;
        EXPECT(authstate_creds_load(se, &out), AUTHSTATE_NOT_FOUND);
        CHECK(out == SENTINEL, "out untouched on NOT_FOUND");
    }
    authstate_session_close(se);
    authstate_store_close(st);
}

static void test_session_bad_input(authstate_store *st) {
    authstate_session *se = SENTINEL;
    EXPECT(authstate_session_open(NULL, "c-ok", &se), AUTHSTATE_INVALID);
    EXPECT(authstate_session_open(st, NULL, &se), AUTHSTATE_INVALID);
    EXPECT(authstate_session_open(st, "c-ok", NULL), AUTHSTATE_INVALID);
    const char *bad[] = {"", "has space", "a/b", "semi;colon", "\xc3\xa9t\xc3\xa9", "\xff",
                         "\xc0\xaf", "tab\t", "quote'", "012345678901234567890123456789012345678901234567890"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        authstate_status s = authstate_session_open(st, bad[i], &se);
        CHECK(s == AUTHSTATE_INVALID, "company id #%zu -> %s", i, authstate_status_message(s));
    }
    CHECK(se == SENTINEL, "out untouched on failure");
    /* 50 characters is the limit, and every allowed character class works. */
    se = NULL;
    EXPECT(authstate_session_open(st, "c_-AZaz09-0123456789012345678901234567890123456789", &se),
           AUTHSTATE_OK);
    authstate_session_close(se);
}

static void test_creds(authstate_store *st) {
    authstate_session *se = NULL;
    EXPECT(authstate_session_open(st, "c-creds", &se), AUTHSTATE_OK);
    if (!se)
        return;
    char *out = SENTINEL;
    EXPECT(authstate_creds_load(se, &out), AUTHSTATE_NOT_FOUND);
    CHECK(out == SENTINEL && authstate_last_error(NULL, 0) > 0, "NOT_FOUND: out kept, text set");
    EXPECT(authstate_creds_load(NULL, &out), AUTHSTATE_INVALID);
    EXPECT(authstate_creds_load(se, NULL), AUTHSTATE_INVALID);

    EXPECT(authstate_creds_save(NULL, "{}"), AUTHSTATE_INVALID);
    EXPECT(authstate_creds_save(se, NULL), AUTHSTATE_INVALID);
    EXPECT(authstate_creds_save(se, ""), AUTHSTATE_INVALID);
    EXPECT(authstate_creds_save(se, "{\"me\":"), AUTHSTATE_INVALID);
    EXPECT(authstate_creds_save(se, "{\"me\":\"\xff\"}"), AUTHSTATE_INVALID);
    EXPECT(authstate_creds_save(se, "{\"me\":\"a\\u0000b\"}"), AUTHSTATE_INVALID);
    EXPECT(authstate_creds_load(se, &out), AUTHSTATE_NOT_FOUND); /* nothing was written */

    /* Keys in jsonb order (shorter first, then bytewise) so the text is the same whether it is
       served from the cache or from PostgreSQL. Buffers in shapes 2, 3 and 4 on the way in. */
    const char *in = "{\"me\":{\"id\":\"1@s.whatsapp.net\"},"
                     "\"noiseKey\":{\"public\":{\"buffer\":true,\"value\":[4,5,6]},"
                     "\"private\":{\"type\":\"Buffer\",\"data\":[1,2,3]}},"
                     "\"advSecretKey\":\"c2VjcmV0\","
                     "\"registrationId\":1234,"
                     "\"signedIdentityKey\":{\"0\":255,\"1\":0}}";
    const char *want = "{\"me\":{\"id\":\"1@s.whatsapp.net\"},"
                       "\"noiseKey\":{\"public\":{\"type\":\"Buffer\",\"data\":\"BAUG\"},"
                       "\"private\":{\"type\":\"Buffer\",\"data\":\"AQID\"}},"
                       "\"advSecretKey\":\"c2VjcmV0\","
                       "\"registrationId\":1234,"
                       "\"signedIdentityKey\":{\"type\":\"Buffer\",\"data\":\"/wA=\"}}";
    EXPECT(authstate_creds_save(se, in), AUTHSTATE_OK);
    EXPECT(authstate_creds_save(se, in), AUTHSTATE_OK); /* unchanged: no write, still OK */
    out = NULL;
    EXPECT(authstate_creds_load(se, &out), AUTHSTATE_OK);
    CHECK_STR(out, want);
    authstate_string_free(out);

    EXPECT(authstate_session_clear(NULL), AUTHSTATE_INVALID);
    EXPECT(authstate_session_clear(se), AUTHSTATE_OK);
    out = SENTINEL;
    EXPECT(authstate_creds_load(se, &out), AUTHSTATE_NOT_FOUND);
    CHECK(out == SENTINEL, "out untouched");
    authstate_session_close(se);
}

static void test_keys_bad_input(authstate_store *st) {
    authstate_session *se = NULL;
    EXPECT(authstate_session_open(st, "c-bad", &se), AUTHSTATE_OK);
    if (!se)
        return;
    const char *ids[] = {"1", "2"};
    char *out = SENTINEL;
    EXPECT(authstate_keys_get(NULL, "pre-key", ids, 2, &out), AUTHSTATE_INVALID);
    EXPECT(authstate_keys_get(se, NULL, ids, 2, &out), AUTHSTATE_INVALID);
    EXPECT(authstate_keys_get(se, "pre-key", NULL, 2, &out), AUTHSTATE_INVALID);
    EXPECT(authstate_keys_get(se, "pre-key", ids, 2, NULL), AUTHSTATE_INVALID);
    const char *with_null[] = {"1", NULL};
    EXPECT(authstate_keys_get(se, "pre-key", with_null, 2, &out), AUTHSTATE_INVALID);
    const char *bad_utf8[] = {"1", "\xe2\x28\xa1"};
    EXPECT(authstate_keys_get(se, "pre-key", bad_utf8, 2, &out), AUTHSTATE_INVALID);
    const char *empty_id[] = {""};
    EXPECT(authstate_keys_get(se, "pre-key", empty_id, 1, &out), AUTHSTATE_INVALID);
    char long_id[1100];
    memset(long_id, 'i', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = 0;
    const char *long_ids[] = {long_id};
    EXPECT(authstate_keys_get(se, "pre-key", long_ids, 1, &out), AUTHSTATE_INVALID);
    const char *bad_types[] = {"", "Pre-Key", "has space", "-lead", "\xff", "pre-key\n",
                               "a234567890123456789012345678901234567890123456789012345678901234x"};
    for (size_t i = 0; i < sizeof bad_types / sizeof *bad_types; i++) {
        authstate_status s = authstate_keys_get(se, bad_types[i], ids, 2, &out);
        CHECK(s == AUTHSTATE_INVALID, "get type #%zu -> %s", i, authstate_status_message(s));
        char *json = xstrdup_printf("{\"%s\":{\"1\":1}}", bad_types[i]);
        s = authstate_keys_set(se, json);
        CHECK(s == AUTHSTATE_INVALID, "set type #%zu -> %s", i, authstate_status_message(s));
        free(json);
    }
    CHECK(out == SENTINEL, "out untouched on failure");

    EXPECT(authstate_keys_set(NULL, "{}"), AUTHSTATE_INVALID);
    EXPECT(authstate_keys_set(se, NULL), AUTHSTATE_INVALID);
    const char *bad_json[] = {
        "", "{", "nul", "{\"pre-key\":{\"1\":}}", "[]", "42", "\"s\"", "null",
        "{\"pre-key\":[1]}", "{\"pre-key\":\"x\"}", "{\"pre-key\":{\"1\":1}} trailing",
        "{\"pre-key\":{\"\":1}}",                       /* empty id */
        "{\"pre-key\":{\"1\":\"a\\u0000b\"}}",           /* NUL cannot be stored in jsonb */
        "{\"pre-key\":{\"a\\u0000b\":1}}",               /* NUL in an id */
        "{\"pre-key\":{\"1\":\"\xff\"}}",                /* invalid UTF-8 inside JSON */
        "{\"pre-key\":{\"good\":1,\"\":2}}",             /* one bad entry refuses the call */
    };
    for (size_t i = 0; i < sizeof bad_json / sizeof *bad_json; i++) {
        authstate_status s = authstate_keys_set(se, bad_json[i]);
        CHECK(s == AUTHSTATE_INVALID, "set json #%zu (%s) -> %s: %s", i, bad_json[i],
              authstate_status_message(s), last_error_text());
    }
    /* Nothing of the refused calls was written. */
    const char *good[] = {"1", "good"};
    out = NULL;
    EXPECT(authstate_keys_get(se, "pre-key", good, 2, &out), AUTHSTATE_OK);
    CHECK_STR(out, "{}");
    authstate_string_free(out);
    /* n == 0 with ids NULL is an empty answer, not an error. */
    out = NULL;
    EXPECT(authstate_keys_get(se, "pre-key", NULL, 0, &out), AUTHSTATE_OK);
    CHECK_STR(out, "{}");
    authstate_string_free(out);
    EXPECT(authstate_keys_set(se, "{}"), AUTHSTATE_OK);
    authstate_session_close(se);
}

/* Rows inserted by SQL in every shape older code wrote; all come out canonical, exact bytes. */
static void test_buffer_shapes(authstate_store *st) {
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    char *b64 = base64(all, 256);
    sbuf arr = {0}, obj = {0};
    for (int i = 0; i < 256; i++) {
        sb_add(&arr, "%s%d", i ? "," : "", i);
        sb_add(&obj, "%s\"%d\":%d", i ? "," : "", i, i);
    }
    sbuf sql = {0};
    sb_add(&sql, "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) VALUES\n");
    sb_add(&sql, " ('c-shapes','pre-key','s1','{\"type\":\"Buffer\",\"data\":\"%s\"}',now()),\n", b64);
    sb_add(&sql, " ('c-shapes','pre-key','s2','{\"type\":\"Buffer\",\"data\":[%s]}',now()),\n", arr.p);
    sb_add(&sql, " ('c-shapes','pre-key','s3a','{\"buffer\":true,\"value\":\"%s\"}',now()),\n", b64);
    sb_add(&sql, " ('c-shapes','pre-key','s3b','{\"buffer\":true,\"value\":[%s]}',now()),\n", arr.p);
    sb_add(&sql, " ('c-shapes','pre-key','s4','{%s}',now()),\n", obj.p);
    /* JavaScript property order: integer keys ascending, whatever order they were written in. */
    sb_add(&sql, " ('c-shapes','pre-key','s4-order','{\"2\":30,\"10\":40,\"0\":10,\"1\":20}',now()),\n");
    /* Node-style lenient base64 (url-safe, unpadded) gives the bytes Buffer.from would. */
    sb_add(&sql, " ('c-shapes','pre-key','s1-urlsafe','{\"type\":\"Buffer\",\"data\":\"-_8\"}',now()),\n");
    sb_add(&sql, " ('c-shapes','pre-key','empty','{\"type\":\"Buffer\",\"data\":[]}',now()),\n");
    /* Nested buffers revive at any depth; base64 strings, {} and mixed objects stay data. */
    sb_add(&sql, " ('c-shapes','session','nested','{\"a\":[{\"buffer\":true,\"value\":\"/w==\"}],"
                 "\"m\":{\"1\":1,\"x\":2},\"e\":{},\"keyData\":\"AAEC\","
                 "\"public\":{\"0\":7,\"1\":8},\"private\":{\"type\":\"Buffer\",\"data\":[255,0]}}',now()),\n");
    /* Plain values of other types. */
    sb_add(&sql, " ('c-shapes','lid-mapping','123','\"456@lid\"',now()),\n");
    sb_add(&sql, " ('c-shapes','device-list','123','[\"0\",\"12\"]',now()),\n");
    sb_add(&sql, " ('c-shapes','sender-key-memory','g@g.us','{\"1@s.whatsapp.net\":true}',now());\n");
    sb_add(&sql, "INSERT INTO whatsapp_auth (company_id, creds, updated_at) VALUES ('c-shapes',"
                 "'{\"noiseKey\":{\"private\":{\"0\":1,\"1\":2}}}', now());\n");
    int rc = run_sql(sql.p);
    CHECK(rc == 0, "psql insert of raw rows exited %d", rc);

    authstate_session *se = NULL;
    EXPECT(authstate_session_open(st, "c-shapes", &se), AUTHSTATE_OK);
    if (se && rc == 0) {
        char *node = buffer_node(all, 256);
        const char *full[] = {"s1", "s2", "s3a", "s3b", "s4"};
        for (size_t i = 0; i < 5; i++) {
            char *got = get_one(se, "pre-key", full[i]);
            char *want = xstrdup_printf("{\"%s\":%s}", full[i], node);
            CHECK_STR(got, want);
            free(want);
            authstate_string_free(got);
        }
        free(node);
        struct {
            const char *type, *id, *want;
        } cases[] = {
            {"pre-key", "s4-order",
             "{\"s4-order\":{\"type\":\"Buffer\",\"data\":\"ChQeKA==\"}}"},
            {"pre-key", "s1-urlsafe", "{\"s1-urlsafe\":{\"type\":\"Buffer\",\"data\":\"+/8=\"}}"},
            {"pre-key", "empty", "{\"empty\":{\"type\":\"Buffer\",\"data\":\"\"}}"},
            /* jsonb stores object keys shorter-first, then bytewise: the order read back. */
            {"session", "nested",
             "{\"nested\":{\"a\":[{\"type\":\"Buffer\",\"data\":\"/w==\"}],\"e\":{},"
             "\"m\":{\"1\":1,\"x\":2},\"public\":{\"type\":\"Buffer\",\"data\":\"Bwg=\"},"
             "\"keyData\":\"AAEC\",\"private\":{\"type\":\"Buffer\",\"data\":\"/wA=\"}}}"},
            {"lid-mapping", "123", "{\"123\":\"456@lid\"}"},
            {"device-list", "123", "{\"123\":[\"0\",\"12\"]}"},
            {"sender-key-memory", "g@g.us", "{\"g@g.us\":{\"1@s.whatsapp.net\":true}}"},
        };
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            char *got = get_one(se, cases[i].type, cases[i].id);
            CHECK_STR(got, cases[i].want);
            authstate_string_free(got);
        }
        /* Several ids in one call: the ones that exist, and no others. */
        const char *ids[] = {"s4-order", "missing", "empty"};
        char *out = NULL;
        EXPECT(authstate_keys_get(se, "pre-key", ids, 3, &out), AUTHSTATE_OK);
        CHECK_STR(out, "{\"s4-order\":{\"type\":\"Buffer\",\"data\":\"ChQeKA==\"},"
                       "\"empty\":{\"type\":\"Buffer\",\"data\":\"\"}}");
        authstate_string_free(out);
        out = NULL;
        EXPECT(authstate_creds_load(se, &out), AUTHSTATE_OK);
        CHECK_STR(out, "{\"noiseKey\":{\"private\":{\"type\":\"Buffer\",\"data\":\"AQI=\"}}}");
        authstate_string_free(out);
    }
    authstate_session_close(se);
    free(b64);
    free(arr.p);
    free(obj.p);
    free(sql.p);
}

static void test_set_get_delete(authstate_store *st) {
    authstate_session *se = NULL;
    EXPECT(authstate_session_open(st, "c-keys", &se), AUTHSTATE_OK);
    if (!se)
        return;
    /* Ids with the characters JIDs and base64 ids contain. */
    EXPECT(authstate_keys_set(se, "{\"session\":{\"1@s.whatsapp.net:2.0\":\"rec\","
                                  "\"AAEC/+=\":{\"type\":\"Buffer\",\"data\":[1]}},"
                                  "\"app-state-sync-key\":{\"AAAAAKfL\":{\"keyData\":\"AAEC\"}},"
                                  "\"some-future-type\":{\"x\":[1,2]}}"),
           AUTHSTATE_OK);
    const char *ids[] = {"1@s.whatsapp.net:2.0", "AAEC/+=", "nope"};
    char *out = NULL;
    EXPECT(authstate_keys_get(se, "session", ids, 3, &out), AUTHSTATE_OK);
    CHECK_STR(out, "{\"1@s.whatsapp.net:2.0\":\"rec\",\"AAEC/+=\":{\"type\":\"Buffer\",\"data\":\"AQ==\"}}");
    authstate_string_free(out);
    char *got = get_one(se, "app-state-sync-key", "AAAAAKfL");
    CHECK_STR(got, "{\"AAAAAKfL\":{\"keyData\":\"AAEC\"}}"); /* base64 strings stay strings */
    authstate_string_free(got);
    got = get_one(se, "some-future-type", "x");
    CHECK_STR(got, "{\"x\":[1,2]}");
    authstate_string_free(got);

    /* The same values read back through another store (cold cache: straight from PostgreSQL,
       whose jsonb reorders object keys) have the same text. `st` holds the company's lease:
       another store with leases is refused, a reader without leases is not. */
    authstate_store *st2 = NULL;
    EXPECT(authstate_store_open_ex(test_url, 0xF0, &st2), AUTHSTATE_INVALID);
    EXPECT(authstate_store_open(test_url, &st2), AUTHSTATE_OK);
    authstate_session *cold = NULL;
    if (st2) {
        EXPECT(authstate_session_open(st2, "c-keys", &cold), AUTHSTATE_LOCKED);
        CHECK(strstr(last_error_text(), "held by another store") != NULL, "names the holder: %s",
              last_error_text());
        authstate_store_close(st2);
        st2 = NULL;
    }
    EXPECT(authstate_store_open_ex(test_url, AUTHSTATE_OPEN_NO_LEASE, &st2), AUTHSTATE_OK);
    if (st2)
        EXPECT(authstate_session_open(st2, "c-keys", &cold), AUTHSTATE_OK);
    if (cold) {
        out = NULL;
        EXPECT(authstate_keys_get(cold, "session", ids, 3, &out), AUTHSTATE_OK);
        CHECK_STR(out, "{\"1@s.whatsapp.net:2.0\":\"rec\",\"AAEC/+=\":{\"type\":\"Buffer\",\"data\":\"AQ==\"}}");
        authstate_string_free(out);
    }
    authstate_session_close(cold);
    authstate_store_close(st2);

    /* null deletes; deleting a missing key is fine; one call may mix puts and deletes. */
    EXPECT(authstate_keys_set(se, "{\"session\":{\"1@s.whatsapp.net:2.0\":null,\"never\":null,"
                                  "\"AAEC/+=\":\"new\"}}"),
           AUTHSTATE_OK);
    out = NULL;
    EXPECT(authstate_keys_get(se, "session", ids, 3, &out), AUTHSTATE_OK);
    CHECK_STR(out, "{\"AAEC/+=\":\"new\"}");
    authstate_string_free(out);
    /* Deletes reach rows the cache never saw (inserted by SQL). The row is inserted before
       its company's session opens: a session holding the lease trusts its key directory
       (loaded half a second after it opens) about keys never stored, so a row inserted behind
       its back later is absent to it, and whether the directory was loaded first depended on
       the harness's speed (under valgrind it was). */
    int rc = run_sql("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at)"
                     " VALUES ('c-keys-sql','pre-key','sql','{\"buffer\":true,\"value\":\"AQ==\"}',now());");
    CHECK(rc == 0, "psql insert exited %d", rc);
    authstate_session *sq = NULL;
    EXPECT(authstate_session_open(st, "c-keys-sql", &sq), AUTHSTATE_OK);
    if (sq) {
        got = get_one(sq, "pre-key", "sql");
        CHECK_STR(got, "{\"sql\":{\"type\":\"Buffer\",\"data\":\"AQ==\"}}");
        authstate_string_free(got);
        EXPECT(authstate_keys_set(sq, "{\"pre-key\":{\"sql\":null}}"), AUTHSTATE_OK);
        got = get_one(sq, "pre-key", "sql");
        CHECK_STR(got, "{}");
        authstate_string_free(got);
        rc = run_sql("SELECT 1/(1 - count(*))::int FROM whatsapp_keys WHERE company_id = 'c-keys-sql';");
        CHECK(rc == 0, "the row is gone from PostgreSQL (psql exited %d)", rc);
    }
    authstate_session_close(sq);

    /* Statistics of the company (3 keys left) and of the whole database; bad input refused. */
    char *stats = NULL;
    EXPECT(authstate_store_stats(st, "c-keys", &stats), AUTHSTATE_OK);
    CHECK(stats && strstr(stats, "\"company_id\":\"c-keys\"") && strstr(stats, "\"keys\":3,\"bytes\""),
          "stats of c-keys: %s", stats ? stats : "(null)");
    authstate_string_free(stats);
    stats = NULL;
    EXPECT(authstate_store_stats(st, NULL, &stats), AUTHSTATE_OK);
    CHECK(stats && strstr(stats, "\"company_id\":null"), "stats of the database: %s", stats ? stats : "(null)");
    authstate_string_free(stats);
    stats = NULL;
    EXPECT(authstate_store_stats(st, "bad id!", &stats), AUTHSTATE_INVALID);
    EXPECT(authstate_store_stats(st, "c-keys", NULL), AUTHSTATE_INVALID);
    EXPECT(authstate_store_stats(NULL, "c-keys", &stats), AUTHSTATE_INVALID);
    CHECK(stats == NULL, "no output on failure");

    /* clear removes every key of the company and nothing of other companies. */
    EXPECT(authstate_session_clear(se), AUTHSTATE_OK);
    got = get_one(se, "app-state-sync-key", "AAAAAKfL");
    CHECK_STR(got, "{}");
    authstate_string_free(got);
    authstate_session_close(se);
}

/* ---- concurrency ------------------------------------------------------------------------------- */

#define THREADS 8

struct thread_arg {
    authstate_store *store;
    authstate_session *shared;
    int index, iters;
};

static void *writer_reader(void *p) {
    struct thread_arg *a = p;
    char company[32];
    snprintf(company, sizeof company, "c-thread-%d", a->index);
    authstate_session *own = NULL;
    EXPECT(authstate_session_open(a->store, company, &own), AUTHSTATE_OK);
    if (!own)
        return NULL;
    for (int k = 0; k < a->iters; k++) {
        unsigned char bytes[3] = {(unsigned char)a->index, (unsigned char)k, 0xff};
        char *b64 = base64(bytes, 3);
        char *json = xstrdup_printf("{\"sender-key\":{\"k%d\":{\"type\":\"Buffer\",\"data\":\"%s\"}},"
                                    "\"session\":{\"s\":\"%d-%d\"}}",
                                    k, b64, a->index, k);
        EXPECT(authstate_keys_set(own, json), AUTHSTATE_OK);
        free(json);
        char id[16];
        snprintf(id, sizeof id, "k%d", k);
        char *got = get_one(own, "sender-key", id);
        char *want = xstrdup_printf("{\"k%d\":{\"type\":\"Buffer\",\"data\":\"%s\"}}", k, b64);
        CHECK_STR(got, want);
        authstate_string_free(got);
        free(want);
        free(b64);

        /* The shared session: every thread writes its own ids (shape 2 in), reads back two. */
        json = xstrdup_printf("{\"pre-key\":{\"t%d-%d\":{\"type\":\"Buffer\",\"data\":[%d,%d]}}}",
                              a->index, k, a->index, k);
        EXPECT(authstate_keys_set(a->shared, json), AUTHSTATE_OK);
        free(json);
        char id_now[32], id_prev[32];
        snprintf(id_now, sizeof id_now, "t%d-%d", a->index, k);
        snprintf(id_prev, sizeof id_prev, "t%d-%d", a->index, k ? k - 1 : 0);
        const char *ids[2] = {id_now, id_prev};
        char *out = NULL;
        EXPECT(authstate_keys_get(a->shared, "pre-key", ids, k ? 2 : 1, &out), AUTHSTATE_OK);
        unsigned char now_bytes[2] = {(unsigned char)a->index, (unsigned char)k};
        char *nb = buffer_node(now_bytes, 2);
        want = xstrdup_printf("\"%s\":%s", id_now, nb);
        CHECK(out && strstr(out, want), "shared read %s: %s", id_now, out ? out : "(null)");
        free(want);
        free(nb);
        authstate_string_free(out);

        /* Every 5th round deletes the previous own key; it must be gone. */
        if (k && k % 5 == 0) {
            json = xstrdup_printf("{\"sender-key\":{\"k%d\":null}}", k - 1);
            EXPECT(authstate_keys_set(own, json), AUTHSTATE_OK);
            free(json);
            snprintf(id, sizeof id, "k%d", k - 1);
            got = get_one(own, "sender-key", id);
            CHECK_STR(got, "{}");
            authstate_string_free(got);
        }
    }
    /* The last write of "session"/"s" wins: calls of one company apply in order. */
    char *got = get_one(own, "session", "s");
    char *want = xstrdup_printf("{\"s\":\"%d-%d\"}", a->index, a->iters - 1);
    CHECK_STR(got, want);
    free(want);
    authstate_string_free(got);
    authstate_session_close(own);
    return NULL;
}

static void test_threads(authstate_store *st, int iters) {
    authstate_session *shared = NULL;
    EXPECT(authstate_session_open(st, "c-shared", &shared), AUTHSTATE_OK);
    if (!shared)
        return;
    pthread_t tid[THREADS];
    struct thread_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (struct thread_arg){st, shared, i, iters};
        CHECK(pthread_create(&tid[i], NULL, writer_reader, &args[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);

    /* Every id every thread wrote into the shared session is there, in one get. */
    size_t n = (size_t)THREADS * (size_t)iters;
    char **ids = calloc(n, sizeof *ids);
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < iters; k++)
            ids[(size_t)i * (size_t)iters + (size_t)k] = xstrdup_printf("t%d-%d", i, k);
    char *out = NULL;
    EXPECT(authstate_keys_get(shared, "pre-key", (const char *const *)ids, n, &out), AUTHSTATE_OK);
    size_t found = 0;
    for (const char *p = out; p && (p = strstr(p, "\"type\":\"Buffer\"")); p++)
        found++;
    CHECK(found == n, "shared session holds %zu of %zu keys", found, n);
    authstate_string_free(out);
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    authstate_session_close(shared);
}

/* After the store is closed, a session that outlived it fails cleanly. */
static void test_use_after_store_close(void) {
    authstate_store *st = NULL;
    EXPECT(authstate_store_open(test_url, &st), AUTHSTATE_OK);
    if (!st)
        return;
    authstate_session *se = NULL;
    EXPECT(authstate_session_open(st, "c-late", &se), AUTHSTATE_OK);
    authstate_store_close(st);
    if (!se)
        return;
    const char *ids[] = {"1"};
    char *out = SENTINEL;
    authstate_status s = authstate_keys_get(se, "pre-key", ids, 1, &out);
    CHECK(s == AUTHSTATE_CLOSED, "keys_get after store close -> %u %s: %s", (unsigned)s,
          authstate_status_message(s), last_error_text());
    CHECK(out == SENTINEL, "out untouched");
    s = authstate_keys_set(se, "{\"pre-key\":{\"1\":1}}");
    CHECK(s == AUTHSTATE_CLOSED, "keys_set after store close -> %u %s: %s", (unsigned)s,
          authstate_status_message(s), last_error_text());
    authstate_session_close(se);
}

/* Journal durability: a set returns once fsynced to the journal, reads see it, close flushes
 * it to PostgreSQL and empties the journal; a NULL journal path is refused. */
static void test_journal(void) {
    authstate_store *st = SENTINEL;
    EXPECT(authstate_store_open_journal(test_url, 0, NULL, &st), AUTHSTATE_INVALID);
    CHECK(st == SENTINEL, "out untouched");
    char path[] = "/tmp/authstate-c-journal-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0)
        return;
    close(fd);
    st = NULL;
    EXPECT(authstate_store_open_journal(test_url, 0, path, &st), AUTHSTATE_OK);
    authstate_session *se = NULL;
    if (st)
        EXPECT(authstate_session_open(st, "c-journal", &se), AUTHSTATE_OK);
    if (se) {
        EXPECT(authstate_keys_set(se, "{\"pre-key\":{\"1\":{\"v\":1}}}"), AUTHSTATE_OK);
        EXPECT(authstate_keys_set(se, "{\"pre-key\":{\"1\":{\"v\":2}}}"), AUTHSTATE_OK);
        char *got = get_one(se, "pre-key", "1");
        CHECK_STR(got, "{\"1\":{\"v\":2}}");
        authstate_string_free(got);
    }
    authstate_session_close(se);
    authstate_store_close(st);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && sb.st_size == 0, "close flushed and emptied the journal");
    unlink(path);
    /* In PostgreSQL: read back by a commit-durability store. */
    st = NULL;
    se = NULL;
    EXPECT(authstate_store_open_ex(test_url, AUTHSTATE_OPEN_NO_LEASE, &st), AUTHSTATE_OK);
    if (st)
        EXPECT(authstate_session_open(st, "c-journal", &se), AUTHSTATE_OK);
    if (se) {
        char *got = get_one(se, "pre-key", "1");
        CHECK_STR(got, "{\"1\":{\"v\":2}}");
        authstate_string_free(got);
    }
    authstate_session_close(se);
    authstate_store_close(st);
}

/* Health report, alerts and Prometheus text: 150 expired rows inserted by SQL make the
 * expired_keys check a warning, which raises an alert that the poll function hands out once. */
static void test_health(authstate_store *st) {
    char *out = SENTINEL;
    EXPECT(authstate_store_health_json(NULL, &out), AUTHSTATE_INVALID);
    EXPECT(authstate_store_health_json(st, NULL), AUTHSTATE_INVALID);
    EXPECT(authstate_store_poll_alert(NULL, &out), AUTHSTATE_INVALID);
    EXPECT(authstate_store_prometheus(st, NULL), AUTHSTATE_INVALID);
    CHECK(out == SENTINEL, "out untouched on failure");

    int rc = run_sql("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at) "
                     "SELECT 'c-health', 'pre-key', 'x' || g, '{}'::jsonb, now() - interval '2 days' "
                     "FROM generate_series(1, 150) g;");
    CHECK(rc == 0, "psql insert of expired rows exited %d", rc);

    char *report = NULL;
    EXPECT(authstate_store_health_json(st, &report), AUTHSTATE_OK);
    CHECK(report && strstr(report, "\"name\": \"database\"") && strstr(report, "\"checks\""),
          "health report: %s", report ? report : "(null)");
    CHECK(report && strstr(report, "\"1-7d\": 150"), "expired histogram: %s",
          report ? report : "(null)");
    authstate_string_free(report);

    /* Drain the alerts: the expired-keys warning is among them, each handed out once. */
    int expired_warnings = 0, n = 0;
    for (;;) {
        char *alert = SENTINEL;
        authstate_status s = authstate_store_poll_alert(st, &alert);
        if (s == AUTHSTATE_NOT_FOUND) {
            CHECK(alert == SENTINEL, "out untouched on NOT_FOUND");
            break;
        }
        EXPECT(s, AUTHSTATE_OK);
        if (s != AUTHSTATE_OK || ++n > 100)
            break;
        if (strstr(alert, "\"kind\":\"expired_keys\"") && strstr(alert, "\"status\":\"warning\""))
            expired_warnings++;
        authstate_string_free(alert);
    }
    CHECK(expired_warnings == 1, "%d expired_keys warning alerts, want 1", expired_warnings);

    char *text = NULL;
    EXPECT(authstate_store_prometheus(st, &text), AUTHSTATE_OK);
    CHECK(text && strstr(text, "# TYPE authstate_pool_max_connections gauge") &&
              strstr(text, "authstate_health_status{check=\"expired_keys\"} 1") &&
              strstr(text, "# EOF"),
          "prometheus text: %s", text ? text : "(null)");
    authstate_string_free(text);

    rc = run_sql("DELETE FROM whatsapp_keys WHERE company_id = 'c-health';");
    CHECK(rc == 0, "psql delete exited %d", rc);
}

int main(void) {
    test_url = getenv("AUTHSTATE_TEST_URL");
    if (!test_url || !*test_url) {
        fprintf(stderr, "AUTHSTATE_TEST_URL is not set\n");
        return 2;
    }
    const char *it = getenv("AUTHSTATE_HARNESS_ITERS");
    int iters = it ? atoi(it) : 40;
    if (iters < 1)
        iters = 1;

    /* setenv is not thread-safe: done before the library starts its runtime threads. */
    setenv("DATABASE_URL", test_url, 1);
    test_status_and_last_error();
    test_open_bad_input();
    test_open_from_env();

    authstate_store *st = NULL;
    EXPECT(authstate_store_open(test_url, &st), AUTHSTATE_OK);
    if (!st) {
        fprintf(stderr, "cannot open the store; stopping\n");
        return 1;
    }
    EXPECT(authstate_store_migrate(st), AUTHSTATE_OK);
    EXPECT(authstate_store_migrate(st), AUTHSTATE_OK); /* idempotent */

    test_health(st);
    test_session_bad_input(st);
    test_creds(st);
    test_keys_bad_input(st);
    test_buffer_shapes(st);
    test_set_get_delete(st);
    test_threads(st, iters);
    authstate_store_close(st);
    CHECK(authstate_last_error(NULL, 0) == 0, "close flushed everything: %s", last_error_text());
    test_use_after_store_close();
    test_journal();

    int f = atomic_load(&failures), c = atomic_load(&checks);
    printf("%s: %d checks, %d failed\n", f ? "FAILED" : "ok", c, f);
    return f ? 1 : 0;
}
