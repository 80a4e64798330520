/* librpm's process-wide set-up and its log captured per thread. librpm calls the log callback in
 * the thread that logs, so a thread-local copy of the last message is that thread's own, even
 * when several threads read packages at once. */
#include "common/rpmlog.h"

#include <pthread.h>
#include <rpm/rpmlib.h>
#include <rpm/rpmlog.h>
#include <string.h>

static pthread_once_t rpm_once = PTHREAD_ONCE_INIT;
static int rpm_config_result;
static __thread char said[RPM_SAID_MAX];

static int rpmlog_keep(rpmlogRec rec, rpmlogCallbackData data)
{
	(void)data;
	if (rpmlogRecPriority(rec) <= RPMLOG_WARNING) {
		snprintf(said, sizeof(said), "%s", rpmlogRecMessage(rec));
		size_t n = strlen(said);
		while (n > 0 && (said[n - 1] == '\n' || said[n - 1] == ' '))
			said[--n] = '\0';
	}
	return 0; /* not RPMLOG_DEFAULT: print nothing */
}

static void rpm_setup_once(void)
{
	rpmlogSetCallback(rpmlog_keep, NULL);
	rpm_config_result = rpmReadConfigFiles(NULL, NULL) == 0 ? 0 : -EIO;
}

int rpm_setup(void)
{
	pthread_once(&rpm_once, rpm_setup_once);
	return rpm_config_result;
}

void rpm_said_clear(void)
{
	said[0] = '\0';
}

const char *rpm_said(void)
{
	return said;
}

const char *rpm_said_detail(char buf[static RPM_SAID_MAX + 4])
{
	if (!said[0])
		return "";
	snprintf(buf, RPM_SAID_MAX + 4, " (%s)", said);
	return buf;
}
