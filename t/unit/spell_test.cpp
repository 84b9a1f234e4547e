#include "spell.h"

#include <gtest/gtest.h>

using recording::Spell;

TEST(Spell, BeginsOnceUntilItEnds)
{
    Spell trouble;
    EXPECT_FALSE(trouble.on());
    EXPECT_TRUE(trouble.begins());
    EXPECT_FALSE(trouble.begins());
    EXPECT_FALSE(trouble.begins());
    EXPECT_TRUE(trouble.on());
}

TEST(Spell, EndsOnlyWhatBegan)
{
    Spell trouble;
    EXPECT_FALSE(trouble.ends());  // no recovery to log: nothing failed
    trouble.begins();
    EXPECT_TRUE(trouble.ends());
    EXPECT_FALSE(trouble.ends());
    EXPECT_FALSE(trouble.on());
}

TEST(Spell, EachSpellIsLoggedAgain)
{
    Spell trouble;
    int logged = 0;
    for (int spell = 0; spell < 3; ++spell) {
        for (int met = 0; met < 5; ++met) {
            logged += trouble.begins();
        }
        logged += trouble.ends();
    }
    EXPECT_EQ(logged, 6);  // a beginning and an end per spell, not one per meeting
}
