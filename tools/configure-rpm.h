/* tools/: the RPM half of mosaic configure: runs the %pre and %post scriptlets of the RPM
 * packages a composition carries, in the chroot, in rpm's transaction order. */
#pragma once

#include "common/common.h"

/* Whether root (a mounted composition) has an rpm database made by mosaic for RPM fragments. */
bool configure_rpm_wanted(const char *root);

/* Inside a chroot_session (tools/chroot-run.h): runs every RPM package's %pre then %post
 * scriptlets that have not yet run, in order, with env as their environment and timeout seconds
 * per scriptlet (0: none); records each one done inside root so a re-run carries on where a
 * failed or killed run stopped and a second run runs nothing. Prints failures (package,
 * scriptlet, exit status, last lines) to stderr. Returns EXIT_OK or EXIT_FAIL. */
int configure_rpm(const char *root, char *const *env, unsigned timeout);
