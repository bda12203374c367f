/*
 * A minimal authstate C program: open a store, save and load creds, write, read and delete keys.
 *
 *   example [DATABASE_URL]      (without an argument: DATABASE_URL or the PG* variables)
 *
 * Build (see scripts/test-c.sh):
 *   cargo build && gcc -Iinclude bindings/c/example.c -Ltarget/debug -lauthstate -o example
 */
#include <stdio.h>
#include <stdlib.h>

#include "authstate.h"

/* Prints the failed call, its status and this thread's error text; returns 1. */
static int fail(const char *what, authstate_status status) {
    char text[512];
    authstate_last_error(text, sizeof text); /* truncated to fit, always NUL-terminated */
    fprintf(stderr, "%s: %s: %s\n", what, authstate_status_message(status), text);
    return 1;
}

int main(int argc, char **argv) {
    const char *url = argc > 1 ? argv[1] : NULL;
    authstate_store *store = NULL;
    authstate_session *session = NULL;
    char *json = NULL;
    int rc = 1;
    authstate_status s;

    if ((s = authstate_store_open(url, &store)) != AUTHSTATE_OK)
        return fail("authstate_store_open", s);
    if ((s = authstate_store_migrate(store)) != AUTHSTATE_OK) {
        fail("authstate_store_migrate", s);
        goto out;
    }
    if ((s = authstate_session_open(store, "example-company", &session)) != AUTHSTATE_OK) {
        fail("authstate_session_open", s);
        goto out;
    }

    /* Creds: buffers may come in any shape; they are stored as {"type":"Buffer","data":base64}. */
    s = authstate_creds_save(session, "{\"me\":{\"id\":\"123@s.whatsapp.net\"},"
                                      "\"noiseKey\":{\"public\":{\"type\":\"Buffer\",\"data\":[1,2,3]}},"
                                      "\"registrationId\":42}");
    if (s != AUTHSTATE_OK) {
        fail("authstate_creds_save", s);
        goto out;
    }
    if ((s = authstate_creds_load(session, &json)) != AUTHSTATE_OK) {
        fail("authstate_creds_load", s);
        goto out;
    }
    printf("creds: %s\n", json);
    authstate_string_free(json); /* every string the library returns is freed with this */
    json = NULL;

    /* Keys: {"type": {"id": value | null}}; null deletes. */
    s = authstate_keys_set(session, "{\"pre-key\":{\"1\":{\"private\":{\"type\":\"Buffer\",\"data\":\"AQI=\"},"
                                    "\"public\":{\"type\":\"Buffer\",\"data\":\"AwQ=\"}},"
                                    "\"2\":{\"private\":{\"type\":\"Buffer\",\"data\":\"BQY=\"},"
                                    "\"public\":{\"type\":\"Buffer\",\"data\":\"Bwg=\"}}}}");
    if (s != AUTHSTATE_OK) {
        fail("authstate_keys_set", s);
        goto out;
    }
    const char *ids[] = {"1", "2", "3"};
    if ((s = authstate_keys_get(session, "pre-key", ids, 3, &json)) != AUTHSTATE_OK) {
        fail("authstate_keys_get", s);
        goto out;
    }
    printf("pre-keys 1,2,3: %s\n", json); /* "3" does not exist: it is absent */
    authstate_string_free(json);
    json = NULL;

    if ((s = authstate_keys_set(session, "{\"pre-key\":{\"1\":null}}")) != AUTHSTATE_OK) {
        fail("authstate_keys_set (delete)", s);
        goto out;
    }
    if ((s = authstate_keys_get(session, "pre-key", ids, 3, &json)) != AUTHSTATE_OK) {
        fail("authstate_keys_get", s);
        goto out;
    }
    printf("after deleting 1: %s\n", json);
    authstate_string_free(json);
    json = NULL;

    if ((s = authstate_session_clear(session)) != AUTHSTATE_OK) {
        fail("authstate_session_clear", s);
        goto out;
    }
    s = authstate_creds_load(session, &json);
    printf("creds after clear: %s\n", authstate_status_message(s)); /* not found */
    rc = s == AUTHSTATE_NOT_FOUND ? 0 : 1;

out:
    authstate_session_close(session); /* NULL is fine */
    authstate_store_close(store);
    return rc;
}
