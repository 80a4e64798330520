/* librpm set up once per process, with what it logs kept per thread instead of printed: in
 * mosaic only tools/ prints, and a caller words librpm's last message into its own error. */
#pragma once

#include "common/common.h"

#define RPM_SAID_MAX 512

/* Once per process, from any thread: routes librpm's log to rpm_said's per-thread buffer and
 * reads librpm's configuration (rpmReadConfigFiles, which also initialises librpm's crypto).
 * 0, or -EIO when librpm could not read its configuration (rpm_said may say why). */
int rpm_setup(void);
/* Forgets what librpm said in this thread. */
void rpm_said_clear(void);
/* The last warning or error librpm logged in this thread since rpm_said_clear, trailing
 * newlines and blanks dropped; "" if none. Valid until librpm logs again in this thread. */
const char *rpm_said(void);
/* The same as " (…)" in buf, to append to a message, or "" (buf is then untouched). buf holds
 * RPM_SAID_MAX + 4 bytes. */
const char *rpm_said_detail(char buf[static RPM_SAID_MAX + 4]);
