#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "site_settings.h"

using recording::is_valid_site_id;
using recording::parse_sample_rate;
using recording::site_settings_from_fields;
using recording::SiteSettings;
using recording::SiteStatus;

namespace {

constexpr std::optional<std::string_view> kMissing = std::nullopt;

double rate(std::string_view text) { return parse_sample_rate(text); }

}  // namespace

TEST(IsValidSiteId, OneToTenDigits)
{
    EXPECT_TRUE(is_valid_site_id("0"));
    EXPECT_TRUE(is_valid_site_id("1"));
    EXPECT_TRUE(is_valid_site_id("42"));
    EXPECT_TRUE(is_valid_site_id("1234567890"));
    EXPECT_TRUE(is_valid_site_id("9999999999"));
    EXPECT_TRUE(is_valid_site_id("0000000001"));
    EXPECT_TRUE(is_valid_site_id("007"));
}

TEST(IsValidSiteId, RejectsEmptyAndElevenDigits)
{
    EXPECT_FALSE(is_valid_site_id(""));
    EXPECT_FALSE(is_valid_site_id("12345678901"));
    EXPECT_FALSE(is_valid_site_id("00000000001"));
}

TEST(IsValidSiteId, RejectsNonDigits)
{
    for (std::string_view id : {"a", "12a", "a12", "-1", "+1", " 1", "1 ", "1.0", "0x1", "1/2", "١",
                                "\xEF\xBC\x91" /* fullwidth 1 */}) {
        EXPECT_FALSE(is_valid_site_id(id)) << id;
    }
    EXPECT_FALSE(is_valid_site_id(std::string_view("1\0", 2)));
    // ':' and '/' sit just after '9' and before '0' in ASCII.
    EXPECT_FALSE(is_valid_site_id("1:"));
    EXPECT_FALSE(is_valid_site_id("/1"));
}

TEST(SiteSettingsFromFields, NeitherFieldMeansUnknown)
{
    SiteSettings settings = site_settings_from_fields(kMissing, kMissing);
    EXPECT_EQ(settings.status, SiteStatus::unknown);
}

TEST(SiteSettingsFromFields, EnabledOnlyForExactlyOne)
{
    SiteSettings settings = site_settings_from_fields("1", kMissing);
    EXPECT_EQ(settings.status, SiteStatus::enabled);
    EXPECT_EQ(settings.sample_rate, 1.0);

    settings = site_settings_from_fields("1", "0.25");
    EXPECT_EQ(settings.status, SiteStatus::enabled);
    EXPECT_EQ(settings.sample_rate, 0.25);
}

TEST(SiteSettingsFromFields, AnyOtherEnabledValueMeansDisabled)
{
    for (std::string_view value : {"0", "true", "", " 1", "1 ", "01", "1.0", "yes", "2"}) {
        EXPECT_EQ(site_settings_from_fields(value, kMissing).status, SiteStatus::disabled) << '"' << value << '"';
        EXPECT_EQ(site_settings_from_fields(value, "0.5").status, SiteStatus::disabled) << '"' << value << '"';
    }
}

TEST(SiteSettingsFromFields, RateWithoutEnabledMeansDisabledNotUnknown)
{
    EXPECT_EQ(site_settings_from_fields(kMissing, "0.5").status, SiteStatus::disabled);
    EXPECT_EQ(site_settings_from_fields(kMissing, "").status, SiteStatus::disabled);
}

TEST(SiteSettingsFromFields, EnabledSiteGetsTheParsedRate)
{
    EXPECT_EQ(site_settings_from_fields("1", "abc").sample_rate, 1.0);
    EXPECT_EQ(site_settings_from_fields("1", "-1").sample_rate, 0.0);
    EXPECT_EQ(site_settings_from_fields("1", "0.00015").sample_rate, 0.00015);
}

TEST(ParseSampleRate, MissingOrUnparseableIsOne)
{
    EXPECT_EQ(parse_sample_rate(kMissing), 1.0);
    EXPECT_EQ(rate(""), 1.0);
    EXPECT_EQ(rate("abc"), 1.0);
    EXPECT_EQ(rate("   "), 1.0);
    EXPECT_EQ(rate("0.5x"), 1.0);
    EXPECT_EQ(rate("0.5 x"), 1.0);
    EXPECT_EQ(rate("0,5"), 1.0);
    EXPECT_EQ(rate(std::string_view("0.5\0", 4)), 1.0);
}

TEST(ParseSampleRate, PlainDecimals)
{
    EXPECT_EQ(rate("0.25"), 0.25);
    EXPECT_EQ(rate("0"), 0.0);
    EXPECT_EQ(rate("1"), 1.0);
    EXPECT_EQ(rate(".5"), 0.5);
    EXPECT_EQ(rate("0.00015"), 0.00015);
}

TEST(ParseSampleRate, SurroundingWhitespaceIsAccepted)
{
    EXPECT_EQ(rate(" 0.5 "), 0.5);
    EXPECT_EQ(rate("\t0.5\n"), 0.5);
    EXPECT_EQ(rate("0.5\r\n"), 0.5);
}

TEST(ParseSampleRate, ClampedIntoZeroOne)
{
    EXPECT_EQ(rate("-1"), 0.0);
    EXPECT_EQ(rate("-0.0001"), 0.0);
    EXPECT_EQ(rate("2"), 1.0);
    EXPECT_EQ(rate("1.0000001"), 1.0);
    EXPECT_EQ(rate("1e10"), 1.0);
}

TEST(ParseSampleRate, HexAndExponentsAsLuaReadsThem)
{
    EXPECT_EQ(rate("0x1"), 1.0);
    EXPECT_EQ(rate("0x0"), 0.0);
    EXPECT_EQ(rate("1e-1"), 0.1);
    EXPECT_EQ(rate("5E-1"), 0.5);
}

TEST(ParseSampleRate, NanAndInfinities)
{
    EXPECT_EQ(rate("nan"), 1.0);
    EXPECT_EQ(rate("inf"), 1.0);
    EXPECT_EQ(rate("-inf"), 0.0);
}

TEST(ParseSampleRate, KeepsFourteenSignificantDigitsLikeLuaTostring)
{
    double parsed = rate("0.123456789012345678");
    EXPECT_EQ(parsed, std::strtod("0.12345678901235", nullptr));
    EXPECT_NE(parsed, std::strtod("0.123456789012345678", nullptr));
}

TEST(ParseSampleRate, FourteenDigitRoundTripIsStable)
{
    // A value that %.14g prints exactly comes back unchanged.
    EXPECT_EQ(rate("0.1"), 0.1);
    EXPECT_EQ(rate("0.12345678901234"), std::strtod("0.12345678901234", nullptr));
    // 0.99999999999999999 rounds to 1 at 14 digits.
    EXPECT_EQ(rate("0.999999999999999"), 1.0);
}
