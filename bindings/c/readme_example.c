/*
 * The C example of the README, as a program: scripts/test-c.sh checks that the README's ```c
 * block is the part between the README markers below (without its 4-space indent), builds this
 * file, runs it against a fresh database (DATABASE_URL) and checks what it prints.
 */
#include <stdio.h>

#include "authstate.h"

int main(void) {
    /* README begin */
    authstate_store *store = NULL;
    authstate_session *session = NULL;
    char *json = NULL;
    const char *keys = "{\"pre-key\": {\"1\": {\"type\": \"Buffer\", \"data\": [1, 2, 3]}}}";
    const char *ids[] = {"1", "2"};
    authstate_status s;
    if ((s = authstate_store_open(NULL /* DATABASE_URL */, &store)) == AUTHSTATE_OK &&
        (s = authstate_store_migrate(store)) == AUTHSTATE_OK &&
        (s = authstate_session_open(store, "acme", &session)) == AUTHSTATE_OK &&
        (s = authstate_keys_set(session, keys)) == AUTHSTATE_OK &&
        (s = authstate_keys_get(session, "pre-key", ids, 2, &json)) == AUTHSTATE_OK) {
        puts(json);                  /* {"1":{"type":"Buffer","data":"AQID"}}: "2" is absent */
        authstate_string_free(json); /* every string the library returns */
    } else {
        char text[256];
        authstate_last_error(text, sizeof text); /* this thread's error, cut to fit */
        fprintf(stderr, "authstate status %u: %s\n", (unsigned)s, text);
    }
    authstate_session_close(session); /* NULL is fine */
    authstate_store_close(store);
    /* README end */
    return s == AUTHSTATE_OK ? 0 : 1;
}
